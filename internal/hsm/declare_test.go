package hsm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

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
