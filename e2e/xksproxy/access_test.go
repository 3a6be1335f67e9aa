package xksproxy

import (
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/xks"
)

// from makes c connect from local address ip (any 127.0.0.0/8 address is
// this host's on Linux), so one test can be two clients.
func (c *client) dialFrom(ip string) *client {
	tr := c.c.HTTP.Transport.(*http.Transport)
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr.DialContext = d.DialContext
	return c
}

// TestAllowedSourceCIDRs: a key store's network rule (--allowed-source-cidrs,
// or allowed_source_cidrs in the config file) refuses every other client
// with 403 AccessDeniedException on every API, GetHealthStatus included —
// the way a proxy refuses a KMS at connect — after path resolution and
// SigV4; the denial is logged with its reason, and SIGHUP reloads the list.
func TestAllowedSourceCIDRs(t *testing.T) {
	dir := t.TempDir()
	pk := pki(t, dir)
	keys, env := keyFile(t, dir)
	sec := writeFile(t, filepath.Join(dir, "secret"), secretA+"\n")
	tc := tlsTo(t, filepath.Join(pk, "ca.pem"))

	t.Run("flag", func(t *testing.T) {
		p := start(t, env, "--access-key-id", akidA, "--secret-access-key-file", sec, "--keys-file", keys,
			"--tls-cert", filepath.Join(pk, "cert.pem"), "--tls-key", filepath.Join(pk, "key.pem"),
			"--uri-path-prefix", "/walled", "--allowed-source-cidrs", "127.0.0.2/32, 10.0.0.0/8")
		base := "https://localhost:" + p.Port()
		outsider := newClient(t, base+"/walled", akidA, secretA, tc) // from 127.0.0.1
		_, err := outsider.health()
		wantErr(t, err, xks.AccessDeniedException)
		_, err = outsider.keyMetadata("both")
		wantErr(t, err, xks.AccessDeniedException)
		_, err = outsider.encrypt("both", []byte("pt"), nil)
		wantErr(t, err, xks.AccessDeniedException)
		// The path and the signature come first.
		_, err = newClient(t, base+"/walled", akidA, secretB, tc).health()
		wantErr(t, err, xks.AuthenticationFailedException)
		_, err = newClient(t, base+"/nope", akidA, secretA, tc).health()
		wantErr(t, err, xks.InvalidURIPathException)
		// An allowed address gets everything.
		insider := newClient(t, base+"/walled", akidA, secretA, tc).dialFrom("127.0.0.2")
		if h, err := insider.health(); err != nil || len(h.EkmFleetDetails) == 0 {
			t.Fatalf("health from 127.0.0.2: %+v %v", h, err)
		}
		roundTrip(t, insider, "both", nil)
		// (The proxy logs a request just after answering it.)
		for _, want := range []string{`"operation":"health","outcome":"AccessDeniedException","status":403`, `"rule":"allowed_source_cidrs"`,
			`"cause":"source address 127.0.0.1:`, `"remote":"127.0.0.2:`} {
			for deadline := time.Now().Add(10 * time.Second); !strings.Contains(p.Log.String(), want); time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("log lacks %s:\n%s", want, p.Log)
				}
			}
		}
	})

	t.Run("config file and SIGHUP", func(t *testing.T) {
		conf := filepath.Join(dir, "xks-proxy.toml")
		write := func(cidrs string) {
			t.Helper()
			body := strings.NewReplacer("PKI", pk, "KEYS", keys, "SECRET", sec, "AKID", akidA, "CIDRS", cidrs).Replace(`
[tls]
cert_file = "PKI/cert.pem"
key_file = "PKI/key.pem"
[key_managers.soft]
type = "keyfile"
keys_file = "KEYS"
[[key_stores]]
uri_path_prefix = "/walled"
key_manager = "soft"
allowed_source_cidrs = CIDRS
  [[key_stores.credentials]]
  access_key_id = "AKID"
  secret_access_key_file = "SECRET"
[[key_stores]]
uri_path_prefix = "/open"
key_manager = "soft"
  [[key_stores.credentials]]
  access_key_id = "AKID"
  secret_access_key_file = "SECRET"
`)
			tmp := writeFile(t, conf+".tmp", body) // renamed: SIGHUP never reads half a file
			if err := os.Rename(tmp, conf); err != nil {
				t.Fatal(err)
			}
		}
		write(`["192.0.2.0/24"]`)
		p := start(t, env, "--config", conf)
		base := "https://localhost:" + p.Port()
		walled, open := newClient(t, base+"/walled", akidA, secretA, tc), newClient(t, base+"/open", akidA, secretA, tc)
		_, err := walled.health()
		wantErr(t, err, xks.AccessDeniedException)
		if _, err := open.health(); err != nil {
			t.Fatalf("a key store without the rule: %v", err)
		}
		// A bad list is refused at reload; the running rule stays.
		write(`["127.0.0.1/99"]`)
		p.HUP(t)
		if !strings.Contains(p.Log.String(), "configuration rejected") {
			t.Fatalf("bad allowed_source_cidrs not rejected:\n%s", p.Log)
		}
		_, err = walled.health()
		wantErr(t, err, xks.AccessDeniedException)
		write(`["192.0.2.0/24", "127.0.0.1"]`)
		p.HUP(t)
		if _, err := walled.health(); err != nil {
			t.Fatalf("after allowing 127.0.0.1 and SIGHUP: %v", err)
		}
		write(`[]`)
		p.HUP(t)
		if _, err := walled.keyMetadata("both"); err != nil {
			t.Fatalf("with an empty list (everyone): %v", err)
		}
	})
}
