package proxycmd

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAllowedSourceCIDRs: the network rule of a key store comes from the config file
// (allowed_source_cidrs) or, for the single-store form, --allowed-source-cidrs; a bad
// entry is refused at start (and so at reload).
func TestAllowedSourceCIDRs(t *testing.T) {
	dir := t.TempDir()
	sec := filepath.Join(dir, "secret")
	os.WriteFile(sec, []byte("PleaseReplaceThisWithSomeSecretOfLength43To64\n"), 0o600)
	n := 0
	file := func(cidrs string) string {
		n++
		p := filepath.Join(dir, fmt.Sprintf("c%d.toml", n))
		os.WriteFile(p, []byte(`insecure_http = true
[key_managers.k]
type = "keyfile"
keys_file = "f"
[[key_stores]]
uri_path_prefix = "/p"
key_manager = "k"
allowed_source_cidrs = [`+cidrs+`]
  [[key_stores.credentials]]
  access_key_id = "AKIDAAAAAAAAAAAAAAAAAAAA"
  secret_access_key_file = "`+sec+`"
`), 0o600)
		return p
	}
	for _, tc := range []struct {
		name string
		args []string
		want string // the parsed prefixes, or "error: …"
	}{
		{"file", []string{"--config", file(`"127.0.0.2/32", "10.0.0.0/8"`)}, "127.0.0.2/32 10.0.0.0/8"},
		{"file, none", []string{"--config", file(``)}, ""},
		{"file, bad", []string{"--config", file(`"10.0.0.0/99"`)}, "error: key store \"/p\": allowed source"},
		{"flag", []string{"--insecure-http", "--access-key-id", "AKIDAAAAAAAAAAAAAAAAAAAA", "--secret-access-key-file", sec,
			"--keys-file", "k", "--allowed-source-cidrs", "127.0.0.2/32, 192.0.2.1"}, "127.0.0.2/32 192.0.2.1/32"},
		{"flag with a file", []string{"--config", file(``), "--allowed-source-cidrs", "127.0.0.2/32"}, "--allowed-source-cidrs defines a key store"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseServeFlags(tc.args, &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			c, err := buildConfig(f)
			var got string
			if err == nil {
				ps, perr := c.policies()
				err = perr
				for _, p := range ps {
					for _, s := range p.Sources {
						got = strings.TrimSpace(got + " " + s.String())
					}
				}
			}
			if err != nil {
				got = "error: " + err.Error()
			}
			if !strings.Contains(got, tc.want) || (tc.want == "" && got != "") {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}
