package proxycmd

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExampleConfigParses(t *testing.T) {
	c, err := loadFile("../../../cmd/xks-proxy/xks-proxy.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.KeyStores) != 2 || len(c.KeyStores[0].Authorization) != 2 || c.KeyManagers["hsm"].Type != "pkcs11" {
		t.Fatalf("example config = %+v", c)
	}
}

// TestSessionKeyCopiesSetting: on unless the configuration says false.
func TestSessionKeyCopiesSetting(t *testing.T) {
	off := false
	if !(KMConf{}).sessionKeyCopies() || (KMConf{SessionKeyCopies: &off}).sessionKeyCopies() {
		t.Fatal("session_key_copies: want true by default and false when set so")
	}
	for in, want := range map[string]int64{"": 0, "500ms": 5e8, "-1s": -1e9} {
		if d, err := (KMConf{KeyCacheTTL: in}).keyCacheTTL(); err != nil || int64(d) != want {
			t.Errorf("key_cache_ttl %q = %v, %v", in, d, err)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct{ file, want string }{
		"unknown key":     {"listen = \"x\"\nlisen = 1\n", "unknown keys: lisen"},
		"no stores":       {"listen = \"x\"\ninsecure_http = true\n", "at least one key store"},
		"no tls":          {"listen = \"x\"\n[key_managers.k]\ntype=\"keyfile\"\nkeys_file=\"f\"\n[[key_stores]]\nkey_manager=\"k\"\n", "TLS certificate"},
		"unknown manager": {"insecure_http = true\n[[key_stores]]\nkey_manager=\"nope\"\n", "unknown key manager"},
		"bad type":        {"insecure_http = true\n[key_managers.k]\ntype=\"vault\"\n[[key_stores]]\nkey_manager=\"k\"\n", "type must be"},
		"bad cache ttl":   {"insecure_http = true\n[key_managers.k]\ntype=\"pkcs11\"\nmodule=\"m\"\ntoken_label=\"t\"\nkey_cache_ttl=\"soon\"\n[[key_stores]]\nkey_manager=\"k\"\n", "key_cache_ttl"},
		"bad prefix":      {"insecure_http = true\n[key_managers.k]\ntype=\"keyfile\"\nkeys_file=\"f\"\n[[key_stores]]\nuri_path_prefix=\"x/\"\nkey_manager=\"k\"\n", "invalid uri_path_prefix"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name+".toml")
			os.WriteFile(path, []byte(tc.file), 0o600)
			f, err := parseServeFlags([]string{"--config", path}, &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = buildConfig(f)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestFlagsOnlyConfig(t *testing.T) {
	f, err := parseServeFlags([]string{"--listen", "127.0.0.1:1", "--uri-path-prefix", "/p", "--access-key-id", "A",
		"--secret-access-key-file", "s", "--keys-file", "k", "--tls-cert", "c", "--tls-key", "k", "--rate-limit", "5"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := buildConfig(f)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:1" || c.KeyStores[0].URIPathPrefix != "/p" || c.KeyManagers["default"].Type != "keyfile" || c.KeyStores[0].RateLimit != 5 {
		t.Fatalf("config = %+v", c)
	}
	for name, args := range map[string][]string{
		"both managers":  {"--access-key-id", "A", "--secret-access-key-file", "s", "--keys-file", "k", "--pkcs11-module", "m", "--insecure-http"},
		"no manager":     {"--access-key-id", "A", "--secret-access-key-file", "s", "--insecure-http"},
		"no credential":  {"--keys-file", "k", "--insecure-http"},
		"store and file": {"--config", "../../../cmd/xks-proxy/xks-proxy.example.toml", "--keys-file", "k"},
	} {
		f, err := parseServeFlags(args, &bytes.Buffer{})
		if err == nil {
			_, err = buildConfig(f)
		}
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestSecretsFromFileAndEnv(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "s"), []byte("from-file\n"), 0o600)
	if s, err := readSecret(filepath.Join(dir, "s"), "", "x"); err != nil || s != "from-file" {
		t.Fatalf("file: %q %v", s, err)
	}
	t.Setenv("XKS_TEST_SECRET", "from-env")
	if s, err := readSecret("", "XKS_TEST_SECRET", "x"); err != nil || s != "from-env" {
		t.Fatalf("env: %q %v", s, err)
	}
	if _, err := readSecret("", "XKS_TEST_UNSET", "x"); err == nil {
		t.Fatal("unset env accepted")
	}
}

func TestRunUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Run(context.Background(), nil, &out, &errb); code != 2 {
		t.Fatalf("no args: %d", code)
	}
	if code := Run(context.Background(), []string{"keys", "create"}, &out, &errb); code != 2 {
		t.Fatalf("keys create without file: %d", code)
	}
	if code := Run(context.Background(), []string{"version"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "xks-proxy") {
		t.Fatalf("version: %d %s", code, out.String())
	}
}

// TestPprofLoopbackOnly: profiles are served on loopback addresses only.
func TestPprofLoopbackOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:6060": true, "[::1]:6060": true, "localhost:6060": true, "127.0.0.2:6060": true,
		"0.0.0.0:6060": false, ":6060": false, "10.0.0.1:6060": false, "example.com:6060": false, "127.0.0.1": false,
	} {
		if err := loopback(addr); (err == nil) != ok {
			t.Errorf("loopback(%q) = %v, want ok %v", addr, err, ok)
		}
	}
	err := serve(context.Background(), []string{"--pprof", "0.0.0.0:6060"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--pprof") {
		t.Fatalf("serve --pprof 0.0.0.0:6060: %v", err)
	}
}
