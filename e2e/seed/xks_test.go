package seed

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

const (
	xksAKID   = "AKIDAAAAAAAAAAAAAAAAAAAA"
	xksSecret = "PleaseReplaceThisWithSomeSecretOfLength43To64"
	xksPass   = "seed-xks-passphrase"
	xksKeyID  = "5e7c1a2b-3d4e-4f50-8a6b-7c8d9e0f1a2b"
)

// xksProxy starts a real `xks-proxy serve` over a key file holding key
// k1, with the test credential, at /kms/xks/v1, and returns it with its CA
// bundle (for kmsd's --xks-ca-bundle) and the file holding the secret.
func xksProxy(t *testing.T) (p *e2etest.Proxy, ca, secretFile string) {
	t.Helper()
	dir := t.TempDir()
	pk, keyFile := filepath.Join(dir, "pki"), filepath.Join(dir, "keys.json")
	proxyRun := func(args ...string) {
		t.Helper()
		cmd := exec.Command(proxyBin, args...)
		cmd.Env = append(os.Environ(), "XKS_PROXY_KEYS_PASSPHRASE="+xksPass)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("xks-proxy %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	proxyRun("dev-cert", "--hostname", "localhost,127.0.0.1", "--out-dir", pk)
	proxyRun("keys", "create", "--keys-file", keyFile, "--id", "k1", "--kdf-iterations", "2000")
	secretFile = filepath.Join(dir, "xks-secret")
	if err := os.WriteFile(secretFile, []byte(xksSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p = e2etest.StartProxy(t, proxyBin, []string{"XKS_PROXY_KEYS_PASSPHRASE=" + xksPass},
		"--access-key-id", xksAKID, "--secret-access-key-file", secretFile, "--keys-file", keyFile,
		"--tls-cert", filepath.Join(pk, "cert.pem"), "--tls-key", filepath.Join(pk, "key.pem"))
	return p, filepath.Join(pk, "ca.pem"), secretFile
}

// xksSeed is a seed file with an external key store behind the proxy at
// port, connected at start, and a key in it with a fixed key id.
func xksSeed(port, path, secretFile string) string {
	return `CustomKeyStores:
  - CustomKeyStoreName: seeded-xks
    CustomKeyStoreType: EXTERNAL_KEY_STORE
    XksProxyUriEndpoint: https://127.0.0.1:` + port + `
    XksProxyUriPath: ` + path + `
    XksProxyConnectivity: PUBLIC_ENDPOINT
    XksProxyAuthenticationCredential:
      AccessKeyId: ` + xksAKID + `
      RawSecretAccessKey: file:` + secretFile + `
    Connect: true
Keys:
  - KeyId: ` + xksKeyID + `
    Description: behind the proxy
    Origin: EXTERNAL_KEY_STORE
    CustomKeyStoreName: seeded-xks
    XksKeyId: k1
    Tags: [{TagKey: team, TagValue: payments}]
Aliases:
  - AliasName: alias/plain
    TargetKeyId: ` + symID + `
`
}

// TestSeedExternalKeyStore: a seed file declares an external key store
// behind a real xks-proxy, connected at start, and a key in it with a
// fixed key id; the aws CLI encrypts and decrypts with it; a second start
// creates nothing and reports no difference (and decrypts the first
// start's ciphertext), and one with another proxy URI path reports it.
func TestSeedExternalKeyStore(t *testing.T) {
	p, ca, secretFile := xksProxy(t)
	data := filepath.Join(t.TempDir(), "data")
	extra := []string{"KMSD_KEYSTORE_CONNECT_DELAY=50ms"}
	args := []string{"--auth", "emulator", "--xks-ca-bundle", ca, "--xks-health-interval", "0"}
	seedFile := write(t, "seed.yaml", strings.Replace(xksSeed(p.Port(), "/kms/xks/v1", secretFile),
		"Aliases:", "  - KeyId: "+symID+"\nAliases:", 1))
	var ct []byte
	for n := 1; n <= 2; n++ {
		e := startEnv(t, data, "us-east-1", extra, append(args, "--seed", seedFile)...)
		md := e.ok("kms", "describe-key", "--key-id", xksKeyID)["KeyMetadata"].(map[string]any)
		xc, _ := md["XksKeyConfiguration"].(map[string]any)
		if md["Origin"] != "EXTERNAL_KEY_STORE" || md["Description"] != "behind the proxy" || xc["Id"] != "k1" || md["KeyState"] != "Enabled" {
			t.Fatalf("start %d: key %v", n, md)
		}
		st := e.ok("kms", "describe-custom-key-stores", "--custom-key-store-name", "seeded-xks")["CustomKeyStores"].([]any)[0].(map[string]any)
		if st["ConnectionState"] != "CONNECTED" || md["CustomKeyStoreId"] != st["CustomKeyStoreId"] {
			t.Fatalf("start %d: store %v, key's store %v", n, st, md["CustomKeyStoreId"])
		}
		if tags := e.ok("kms", "list-resource-tags", "--key-id", xksKeyID)["Tags"].([]any); len(tags) != 1 {
			t.Fatalf("start %d: tags %v", n, tags)
		}
		if n == 1 {
			ct = b64(t, e.ok("kms", "encrypt", "--key-id", xksKeyID, "--plaintext", fileb(t, []byte("behind the proxy"))), "CiphertextBlob")
		} else {
			log := e.k.Log()
			for _, want := range []string{"seed applied\" created=0 existing=3 differences=0", "seed: custom key stores applied\" created=0 existing=1 differences=0"} {
				if !strings.Contains(log, want) {
					t.Fatalf("second start's log lacks %q:\n%s", want, log)
				}
			}
		}
		out := e.ok("kms", "decrypt", "--ciphertext-blob", fileb(t, ct))
		if pt := b64(t, out, "Plaintext"); string(pt) != "behind the proxy" || !strings.HasSuffix(out["KeyId"].(string), xksKeyID) {
			t.Fatalf("start %d: decrypt %q by %v", n, pt, out["KeyId"])
		}
		if ids := e.keyIDs(); len(ids) != 2 {
			t.Fatalf("start %d: keys %v", n, ids)
		}
		if strings.Contains(e.k.Log(), xksSecret) {
			t.Fatal("the proxy's secret is in kmsd's log")
		}
		e.k.Stop()
	}
	// A third start whose file says another path (one the proxy also
	// serves under a prefix it does not have: only compared, not used).
	other := write(t, "other.yaml", xksSeed(p.Port(), "/other/kms/xks/v1", secretFile))
	e := startEnv(t, data, "us-east-1", extra, append(args, "--seed", other)...)
	if log := e.k.Log(); !strings.Contains(log, `XksProxyUriPath is \"/kms/xks/v1\", the seed file says \"/other/kms/xks/v1\"`) {
		t.Fatalf("third start's log lacks the path's difference:\n%s", log)
	}
	e.k.Stop()
}

// TestSeedExternalKeyStoreBroken: a broken external key store entry, or a
// key in a store that is not connected at start, stops kmsd naming the
// line, with nothing of the file written (not even its plain key).
func TestSeedExternalKeyStoreBroken(t *testing.T) {
	p, ca, secretFile := xksProxy(t)
	good := xksSeed(p.Port(), "/kms/xks/v1", secretFile)
	cases := []struct {
		name, seed, want string
	}{
		{"bad path", strings.Replace(good, "/kms/xks/v1", "/kms/xks", 1),
			"seed.yaml:2: custom key store seeded-xks: 2 validation errors detected: Value '/kms/xks' at 'xksProxyUriPath' failed to satisfy constraint"},
		{"vpc service on a public endpoint", strings.Replace(good, "    Connect: true\n", "    XksProxyVpcEndpointServiceName: com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0\n    Connect: true\n", 1),
			"seed.yaml:2: custom key store seeded-xks: 1 validation error detected: XksProxyVpcEndpointServiceName and XksProxyVpcEndpointServiceOwner are valid only with XksProxyConnectivity VPC_ENDPOINT_SERVICE."},
		{"short access key id", strings.Replace(good, "AccessKeyId: "+xksAKID, "AccessKeyId: AKID", 1),
			"seed.yaml:2: custom key store seeded-xks: 1 validation error detected: Value at 'xksProxyAuthenticationCredential.accessKeyId' failed to satisfy constraint: Member must have length greater than or equal to 20"},
		{"inline secret", strings.Replace(good, "file:"+secretFile, xksSecret, 1),
			"seed.yaml:2: custom key store seeded-xks: XksProxyAuthenticationCredential.RawSecretAccessKey: want file:/path or env:NAME"},
		{"not connected", strings.Replace(good, "    Connect: true\n", "", 1),
			"seed.yaml:11: key " + xksKeyID + ": custom key store seeded-xks needs Connect: true"},
		{"alias of the store's key", strings.Replace(good, "TargetKeyId: "+symID, "TargetKeyId: "+xksKeyID, 1),
			"seed.yaml:20: alias alias/plain: keys of the seed file in custom key stores are made once their stores are connected"},
		{"no xks key id", strings.Replace(good, "    XksKeyId: k1\n", "", 1),
			"seed.yaml:12: key " + xksKeyID + ": XksKeyId is required with Origin EXTERNAL_KEY_STORE"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			file := write(t, "seed.yaml", strings.Replace(c.seed, "Aliases:", "  - KeyId: "+symID+"\nAliases:", 1))
			cmd := exec.Command(kmsdBin, "serve", "--listen", e2etest.FreeAddr(t), "--data-dir", data, "--seed", file,
				"--xks-ca-bundle", ca, "--xks-health-interval", "0")
			cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
			done := make(chan struct{})
			var out []byte
			var err error
			go func() { out, err = cmd.CombinedOutput(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("kmsd did not stop on a broken seed file:\n%s", out)
			}
			if err == nil || !strings.Contains(string(out), c.want) {
				t.Fatalf("kmsd: %v, output lacks %q:\n%s", err, c.want, out)
			}
			if strings.Contains(string(out), xksSecret) {
				t.Fatal("the proxy's secret is in kmsd's output")
			}
			e := start(t, data, "us-east-1", "--xks-ca-bundle", ca, "--xks-health-interval", "0")
			if ids := e.keyIDs(); len(ids) != 0 {
				t.Fatalf("keys %v left by a broken seed file", ids)
			}
			if ss := e.ok("kms", "describe-custom-key-stores")["CustomKeyStores"].([]any); len(ss) != 0 {
				t.Fatalf("stores %v left by a broken seed file", ss)
			}
			e.k.Stop()
		})
	}
}
