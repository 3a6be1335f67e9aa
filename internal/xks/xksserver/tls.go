package xksserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/kmsd/kmsd/internal/secretfile"
)

// TLSFiles names the PEM files of the proxy's TLS setup.
type TLSFiles struct {
	CertFile string // server certificate chain
	KeyFile  string // its private key
	// ClientCAFile, when set, turns on mTLS: clients must present a certificate
	// chaining to one of these roots.
	ClientCAFile string
	// ClientSubject, with mTLS, is the identity the client certificate must carry:
	// its subject CN, or one of its DNS names (AWS KMS presents
	// cks.kms.<region>.amazonaws.com). Empty accepts any certificate from the CA.
	ClientSubject string
}

// TLS12CipherSuites are the spec's TLS 1.2 suites; TLS 1.3 suites are Go's fixed set,
// which includes the spec's TLS_AES_256_GCM_SHA384 and TLS_CHACHA20_POLY1305_SHA256.
var TLS12CipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
}

type tlsState struct {
	cfg *tls.Config
}

// TLSReloader serves a TLS configuration whose certificate, key and client CA are
// re-read from their files by Reload (on SIGHUP) without dropping the listener.
type TLSReloader struct {
	files TLSFiles
	state atomic.Pointer[tlsState]
}

// NewTLSReloader loads the files once; errors here stop the start.
func NewTLSReloader(files TLSFiles) (*TLSReloader, error) {
	if files.CertFile == "" || files.KeyFile == "" {
		return nil, errors.New("TLS certificate and key files are required (or --insecure-http behind a TLS-terminating load balancer)")
	}
	if files.ClientSubject != "" && files.ClientCAFile == "" {
		return nil, errors.New("an expected mTLS client subject needs a client CA file")
	}
	r := &TLSReloader{files: files}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload re-reads the files; on error the previous configuration stays in use.
func (r *TLSReloader) Reload() error {
	// The private key must be private to this user (package secretfile);
	// the certificate is public.
	certPEM, err := os.ReadFile(r.files.CertFile)
	if err != nil {
		return fmt.Errorf("TLS certificate: %w", err)
	}
	keyPEM, err := secretfile.Read(r.files.KeyFile)
	if err != nil {
		return fmt.Errorf("TLS private key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	clear(keyPEM)
	if err != nil {
		return fmt.Errorf("TLS certificate: %w", err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		CipherSuites: TLS12CipherSuites,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2", "http/1.1"},
	}
	if r.files.ClientCAFile != "" {
		pemBytes, err := os.ReadFile(r.files.ClientCAFile)
		if err != nil {
			return fmt.Errorf("mTLS client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return fmt.Errorf("mTLS client CA %s: no PEM certificates", r.files.ClientCAFile)
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = pool
		if want := r.files.ClientSubject; want != "" {
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return errors.New("mTLS: no client certificate")
				}
				leaf := cs.PeerCertificates[0]
				if leaf.Subject.CommonName == want || slices.Contains(leaf.DNSNames, want) {
					return nil
				}
				return fmt.Errorf("mTLS: client certificate subject %q is not %q", leaf.Subject.CommonName, want)
			}
		}
	}
	r.state.Store(&tlsState{cfg: cfg})
	return nil
}

// Config returns the listener configuration; each handshake uses the latest files.
func (r *TLSReloader) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return r.state.Load().cfg, nil
		},
	}
}

// DevCertOptions describe a development PKI.
type DevCertOptions struct {
	Hosts    []string // DNS names and IP addresses of the server certificate
	ClientCN string   // when set, also a client certificate with this CN and DNS name
	Validity time.Duration
	Now      time.Time
}

// DevCerts is a generated development PKI in PEM.
type DevCerts struct {
	CA, CAKey, Cert, Key, ClientCert, ClientKey []byte

	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
	o     DevCertOptions
}

// IssueClient signs another client certificate with the development CA.
func (d *DevCerts) IssueClient(cn string) (cert, key []byte, err error) {
	return d.leaf(cn, []string{cn}, nil, x509.ExtKeyUsageClientAuth)
}

func (d *DevCerts) leaf(cn string, dns []string, ips []net.IP, usage x509.ExtKeyUsage) ([]byte, []byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    d.o.Now.Add(-time.Hour),
		NotAfter:     d.o.Now.Add(d.o.Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, d.ca, &k.PublicKey, d.caKey)
	if err != nil {
		return nil, nil, err
	}
	kp, err := pemKey(k)
	return pemCert(der), kp, err
}

// NewDevCerts creates a private CA and certificates signed by it (ECDSA P-256), for
// local use and tests only.
func NewDevCerts(o DevCertOptions) (*DevCerts, error) {
	if len(o.Hosts) == 0 {
		return nil, errors.New("at least one hostname is required")
	}
	if o.Validity == 0 {
		o.Validity = 365 * 24 * time.Hour
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "xks-proxy development CA", Organization: []string{"kmsd"}},
		NotBefore:             o.Now.Add(-time.Hour),
		NotAfter:              o.Now.Add(o.Validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	out := &DevCerts{CA: pemCert(caDER), ca: ca, caKey: caKey, o: o}
	if out.CAKey, err = pemKey(caKey); err != nil {
		return nil, err
	}
	var dns []string
	var ips []net.IP
	for _, h := range o.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, h)
		}
	}
	if out.Cert, out.Key, err = out.leaf(o.Hosts[0], dns, ips, x509.ExtKeyUsageServerAuth); err != nil {
		return nil, err
	}
	if o.ClientCN != "" {
		if out.ClientCert, out.ClientKey, err = out.leaf(o.ClientCN, []string{o.ClientCN}, nil, x509.ExtKeyUsageClientAuth); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Write stores the PKI in dir: ca.pem, cert.pem, key.pem, and client.pem /
// client-key.pem when a client certificate was made. The CA key is not written: a
// new development PKI is one command away.
func (d *DevCerts) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"ca.pem", d.CA, 0o644}, {"cert.pem", d.Cert, 0o644}, {"key.pem", d.Key, 0o600},
	}
	if d.ClientCert != nil {
		files = append(files, struct {
			name string
			data []byte
			mode os.FileMode
		}{"client.pem", d.ClientCert, 0o644}, struct {
			name string
			data []byte
			mode os.FileMode
		}{"client-key.pem", d.ClientKey, 0o600})
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	return n
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func pemKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
