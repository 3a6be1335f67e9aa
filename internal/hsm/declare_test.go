package hsm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA makes a self-signed CA certificate, PEM.
func testCA(t *testing.T) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "declared CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func TestLoadDeclarations(t *testing.T) {
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "so.pin")
	if err := os.WriteFile(pinFile, []byte("soPin1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DECL_TEST_PIN", "userPin1")
	// A module path that exists; the file is not loaded here.
	module := pinFile
	cluster := func(extra string) string {
		return "[[cluster]]\nmodule = \"" + module + "\"\nso_pin = \"file:" + pinFile + "\"\ncrypto_user_pin = \"env:DECL_TEST_PIN\"\n" + extra
	}
	hsmA := "[[cluster.hsm]]\ntoken = \"tok-a\"\navailability_zone = \"us-east-1a\"\n"
	// A trust anchor: a self-signed CA certificate; and a leaf that is none.
	caPEM := testCA(t)
	anchor, notCA := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "leaf.crt")
	if err := os.WriteFile(anchor, []byte(caPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(notCA, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, file, err string
	}{
		{"name", cluster("name = \"payments\"\n" + hsmA), ""},
		{"id", cluster("id = \"cluster-abcdefghijk\"\n" + hsmA), ""},
		{"no id nor name", cluster(hsmA), "give an id or a name"},
		{"bad id", cluster("id = \"cluster-1\"\n" + hsmA), "an id is cluster-"},
		{"no hsm", cluster("name = \"x\"\n"), "at least one"},
		{"inline secret", strings.Replace(cluster("name = \"x\"\n"+hsmA), "env:DECL_TEST_PIN", "userPin1", 1), "never given inline"},
		{"unset env", strings.Replace(cluster("name = \"x\"\n"+hsmA), "DECL_TEST_PIN", "DECL_TEST_UNSET", 1), "not set"},
		{"zone of another region", cluster("name = \"x\"\n[[cluster.hsm]]\ntoken = \"t\"\navailability_zone = \"eu-west-1a\"\n"), "not a zone"},
		{"token twice", cluster("name = \"x\"\n" + hsmA + hsmA), "distinct labels"},
		{"relative module", strings.Replace(cluster("name = \"x\"\n"+hsmA), module, "libfoo.so", 1), "absolute path"},
		{"unknown key", cluster("name = \"x\"\ncolour = \"blue\"\n" + hsmA), "unknown keys"},
		{"trust anchor", cluster("name = \"x\"\ntrust_anchor = \"" + anchor + "\"\n" + hsmA), ""},
		{"trust anchor not a certificate", cluster("name = \"x\"\ntrust_anchor = \"" + notCA + "\"\n" + hsmA), "one PEM CA certificate"},
		{"trust anchor missing", cluster("name = \"x\"\ntrust_anchor = \"" + dir + "/none.crt\"\n" + hsmA), "trust_anchor"},
		{"declared twice", cluster("name = \"x\"\n"+hsmA) + cluster("name = \"x\"\n"+hsmA), "declared twice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hsm.toml")
			if err := os.WriteFile(path, []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			ds, err := LoadDeclarations(path, "111122223333", "us-east-1")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				if strings.Contains(err.Error(), "userPin1") || strings.Contains(err.Error(), "soPin1234") {
					t.Fatalf("the error shows a secret: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			d := ds[0]
			if !clusterIDPattern.MatchString(d.ID) || d.CryptoUser != "kmsuser" || d.HsmType != "hsm2m.medium" || d.Account != "111122223333" || d.Region != "us-east-1" {
				t.Fatalf("declaration %+v", d)
			}
			if strings.Contains(tc.file, "trust_anchor") && !strings.Contains(d.TrustAnchor, "BEGIN CERTIFICATE") {
				t.Fatalf("trust anchor %q", d.TrustAnchor)
			}
			if pin, _ := d.SOPIN.Resolve(); pin != "soPin1234" {
				t.Fatalf("so_pin resolves to %q", pin)
			}
		})
	}
	// The id derived from a name is the same on every start.
	if a, b := derive("cluster-", "declared/payments", 11), derive("cluster-", "declared/payments", 11); a != b {
		t.Fatal("derived ids differ")
	}
}
