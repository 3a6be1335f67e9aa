package hsm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// newCSR makes the cluster's key pair and its certificate signing request,
// which DescribeClusters hands out while the cluster is UNINITIALIZED. The
// private key is returned as PKCS#8 for sealing.
func (s *Service) newCSR(clusterID string) (csrPEM string, key []byte, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), s.rand)
	if err != nil {
		return "", nil, err
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{
		CommonName:         clusterID,
		Organization:       []string{"kmsd"},
		OrganizationalUnit: []string{"HSM cluster"},
	}}
	der, err := x509.CreateCertificateRequest(s.rand, tmpl, priv)
	if err != nil {
		return "", nil, err
	}
	key, err = x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", nil, err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), key, nil
}

func parseCerts(s string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(s)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return out, nil
}

// checkSignedCert verifies InitializeCluster's inputs: signed must carry
// the public key of the cluster's CSR, anchor must be a self-signed CA
// certificate, and signed must chain to anchor (through any intermediate
// certificates that follow it in signed).
func checkSignedCert(csrPEM, signed, anchor string, now time.Time) error {
	b, _ := pem.Decode([]byte(csrPEM))
	if b == nil {
		return errors.New("the cluster has no CSR")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return err
	}
	certs, err := parseCerts(signed)
	if err != nil {
		return fmt.Errorf("SignedCert is not a PEM certificate: %v", err)
	}
	roots, err := parseCerts(anchor)
	if err != nil {
		return fmt.Errorf("TrustAnchor is not a PEM certificate: %v", err)
	}
	if len(roots) != 1 {
		return errors.New("TrustAnchor must be exactly one certificate")
	}
	root := roots[0]
	if err := root.CheckSignatureFrom(root); err != nil {
		return errors.New("TrustAnchor must be a self-signed CA certificate")
	}
	leaf := certs[0]
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(csr.PublicKey) {
		return errors.New("SignedCert does not certify the public key of the cluster's CSR")
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("SignedCert does not chain to the TrustAnchor: %v", err)
	}
	return nil
}
