package xks

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/kmsd/kmsd/e2e/e2etest"
)

// prefixConfig is an xks-proxy configuration with one key store, at
// PREFIX, over one key file.
const prefixConfig = `
region = "us-east-1"
[tls]
cert_file = "PKI/cert.pem"
key_file = "PKI/key.pem"
[key_managers.soft]
type = "keyfile"
keys_file = "KEYS"
[[key_stores]]
uri_path_prefix = "PREFIX"
key_manager = "soft"
  [[key_stores.credentials]]
  access_key_id = "AKID"
  secret_access_key_file = "SECRET"
`

// TestProxyRestartWhileConnected: the proxy under a CONNECTED external key
// store is stopped and started again on its address. The store stays
// CONNECTED throughout (spec §6.2: a broken backing store changes no
// state); while the proxy is down its keys answer KMSInvalidStateException
// (cannot communicate). Restarted with the same URI path prefix, the keys
// work again with no reconnect and decrypt what they encrypted before.
// Restarted with another prefix, the store is still CONNECTED but its keys
// answer KMSInvalidStateException (invalid URI path) and the background
// health check logs XKS_PROXY_INVALID_CONFIGURATION; a reconnect fails with
// that code (spec §8.3); the documented remedy — disconnect, update
// XksProxyUriPath, connect — brings the keys back, as does an update of
// the path alone while CONNECTED (spec §6.3).
func TestProxyRestartWhileConnected(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pk := filepath.Join(dir, "pki")
	proxyRun(t, "dev-cert", "--hostname", "localhost,127.0.0.1", "--out-dir", pk)
	keyFile := filepath.Join(dir, "keys.json")
	proxyRun(t, "keys", "create", "--keys-file", keyFile, "--id", "k1", "--kdf-iterations", "2000")
	conf := filepath.Join(dir, "xks-proxy.toml")
	sf := writeFile(t, filepath.Join(dir, "secret"), secret)
	// start runs xks-proxy at addr serving the key store at prefix.
	start := func(addr, prefix string) *proxy {
		t.Helper()
		writeFile(t, conf, strings.NewReplacer("PKI", pk, "KEYS", keyFile, "AKID", akid, "SECRET", sf, "PREFIX", prefix).Replace(prefixConfig))
		return e2etest.StartProxyAt(t, proxyBin, addr, []string{"XKS_PROXY_KEYS_PASSPHRASE=" + pass}, "--config", conf)
	}
	p := start(e2etest.FreeAddr(t), "/a")
	k := startKMSD(t, "--xks-ca-bundle", filepath.Join(pk, "ca.pem"), "--xks-health-interval", "200ms")
	id, errs, code := k.createStore(storeReq("restarted", "PUBLIC_ENDPOINT", "https://localhost:"+p.Port(), "/a/kms/xks/v1", akid, secret))
	if code != 0 {
		t.Fatalf("create: %s", errs)
	}
	k.aws(connectArgs(id)...)
	if e := k.settle(id)[id]; e["ConnectionState"] != "CONNECTED" {
		t.Fatalf("connect: %v", e)
	}
	xk := k.aws("kms", "create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", id, "--xks-key-id", "k1")["KeyMetadata"].(map[string]any)["KeyId"].(string)
	ctx := context.Background()
	c := k.sdk()
	msg := []byte("made before the proxy restarted")
	enc, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: &xk, Plaintext: msg})
	if err != nil {
		t.Fatal(err)
	}
	encrypt := func() error {
		_, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: &xk, Plaintext: msg})
		return err
	}
	decrypts := func(what string) {
		t.Helper()
		if d, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob}); err != nil || !bytes.Equal(d.Plaintext, msg) {
			t.Fatalf("decrypt %s: %v", what, err)
		}
	}
	connected := func(what string) {
		t.Helper()
		if e := k.store(id); e["ConnectionState"] != "CONNECTED" || e["ConnectionErrorCode"] != nil {
			t.Fatalf("store %s: %v %v, want CONNECTED", what, e["ConnectionState"], e["ConnectionErrorCode"])
		}
	}

	t.Run("proxy down", func(t *testing.T) {
		p.Stop()
		wantAPIError(t, "encrypt with the proxy down", encrypt(), "KMSInvalidStateException", msgUnreachable)
		connected("with its proxy down")
	})
	t.Run("same prefix", func(t *testing.T) {
		p = start(p.Addr, "/a")
		waitFor(t, "encrypt through the restarted proxy", func() bool { return encrypt() == nil })
		decrypts("through the restarted proxy")
		connected("after its proxy restarted")
	})
	t.Run("changed prefix", func(t *testing.T) {
		p.Stop()
		p = start(p.Addr, "/b")
		waitFor(t, "the proxy's answer to the old prefix", func() bool { return apiMessage(encrypt()) == msgURIPath })
		wantAPIError(t, "encrypt at the old prefix", encrypt(), "KMSInvalidStateException", msgURIPath)
		connected("after its proxy changed prefix")
		waitFor(t, "kmsd's health check to log the invalid configuration", func() bool {
			b, _ := os.ReadFile(k.log)
			return strings.Contains(string(b), `msg="keystore: XKS proxy health check failed" store=`+id+` code=XKS_PROXY_INVALID_CONFIGURATION`)
		})
		// A reconnect tells the cause as the store's code.
		k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", id)
		k.settle(id)
		k.aws(connectArgs(id)...)
		if e := k.settle(id)[id]; e["ConnectionState"] != "FAILED" || e["ConnectionErrorCode"] != "XKS_PROXY_INVALID_CONFIGURATION" {
			t.Fatalf("reconnect at the old prefix: %v %v, want FAILED XKS_PROXY_INVALID_CONFIGURATION", e["ConnectionState"], e["ConnectionErrorCode"])
		}
		// The remedy: disconnect, update the path, connect.
		k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", id)
		k.settle(id)
		k.aws("kms", "update-custom-key-store", "--custom-key-store-id", id, "--xks-proxy-uri-path", "/b/kms/xks/v1")
		k.aws(connectArgs(id)...)
		if e := k.settle(id)[id]; e["ConnectionState"] != "CONNECTED" {
			t.Fatalf("connect at the new prefix: %v", e)
		}
		decrypts("at the new prefix")
	})
	t.Run("changed back, path updated while connected", func(t *testing.T) {
		p.Stop()
		p = start(p.Addr, "/a")
		waitFor(t, "the proxy's answer to the old prefix", func() bool { return apiMessage(encrypt()) == msgURIPath })
		k.aws("kms", "update-custom-key-store", "--custom-key-store-id", id, "--xks-proxy-uri-path", "/a/kms/xks/v1")
		connected("after a live path update")
		if err := encrypt(); err != nil {
			t.Fatalf("encrypt after a live path update: %v", err)
		}
		decrypts("after a live path update")
	})
}
