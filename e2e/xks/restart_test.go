package xks

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/kmsd/kmsd/e2e/e2etest"
)

// TestRestartWhileConnected: kmsd killed (SIGKILL) while an external key
// store is CONNECTED comes back on the same data directory with the store
// CONNECTED by itself — it resumes the connection with a real
// GetHealthStatus — and the store's key encrypts, and decrypts ciphertexts
// made before the kill.
func TestRestartWhileConnected(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pk := filepath.Join(dir, "pki")
	proxyRun(t, "dev-cert", "--hostname", "localhost,127.0.0.1,restart.xks.test", "--out-dir", pk)
	keyFile := filepath.Join(dir, "keys.json")
	proxyRun(t, "keys", "create", "--keys-file", keyFile, "--id", "k1", "--kdf-iterations", "2000")
	p := startProxy(t, pk, keyFile)
	const svc = "com.amazonaws.vpce.us-east-1.vpce-svc-00000000000000ad"
	args := []string{"--xks-ca-bundle", filepath.Join(pk, "ca.pem"), "--xks-health-interval", "0",
		"--xks-vpc-endpoint-services", svc + "=restart.xks.test@" + p.Addr}
	data := filepath.Join(dir, "data")
	k := startKMSDAt(t, data, args...)

	id, errs, code := k.createStore(withSvc(storeReq("restart", "VPC_ENDPOINT_SERVICE", "https://restart.xks.test", "/kms/xks/v1", akid, secret), svc))
	if code != 0 {
		t.Fatalf("create: %s", errs)
	}
	k.aws(connectArgs(id)...)
	if e := k.settle(id)[id]; e["ConnectionState"] != "CONNECTED" {
		t.Fatalf("connect: %v", e)
	}
	xk := k.aws("kms", "create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", id, "--xks-key-id", "k1")["KeyMetadata"].(map[string]any)["KeyId"].(string)
	ctx := context.Background()
	msg := []byte("made before the crash")
	ec := map[string]string{"phase": "before"}
	enc, err := k.sdk().Encrypt(ctx, &kms.EncryptInput{KeyId: &xk, Plaintext: msg, EncryptionContext: ec})
	if err != nil {
		t.Fatal(err)
	}

	k.kill()
	connects := strings.Count(p.Log.String(), `"kmsOperation":"ConnectCustomKeyStore"`)
	k = startKMSDAt(t, data, args...)
	if e := k.settle(id)[id]; e["ConnectionState"] != "CONNECTED" || e["ConnectionErrorCode"] != nil {
		t.Fatalf("after the restart: %v", e)
	}
	n := func() int { return strings.Count(p.Log.String(), `"kmsOperation":"ConnectCustomKeyStore"`) }
	waitFor(t, "the restarted kmsd's health check in the proxy's log", func() bool { return n() > connects })
	if n() != connects+1 {
		t.Fatalf("the restarted kmsd made %d connect health checks, want 1", n()-connects)
	}
	c := k.sdk()
	if d, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec}); err != nil || !bytes.Equal(d.Plaintext, msg) {
		t.Fatalf("decrypt of a ciphertext from before the crash: %v", err)
	}
	after := base64.StdEncoding.EncodeToString([]byte("made after the restart"))
	cb := k.aws("kms", "encrypt", "--key-id", xk, "--plaintext", after)["CiphertextBlob"].(string)
	raw, _ := base64.StdEncoding.DecodeString(cb)
	if d, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: raw}); err != nil || base64.StdEncoding.EncodeToString(d.Plaintext) != after {
		t.Fatalf("round trip after the restart: %v", err)
	}
}

// TestRestartDuringProxyOutage: kmsd killed while an external key store is
// CONNECTED, and started again while the store's proxy is down, keeps the
// store CONNECTED with no error code (spec §6.2: a broken backing store
// changes no state; AWS never fails a store by itself) and its keys answer
// KMSInvalidStateException (cannot communicate with the proxy, §10.7).
// When the proxy returns the keys work again — they decrypt what they
// encrypted before the crash — and kmsd's own retry health-checks the proxy
// (a GetHealthStatus with kmsOperation ConnectCustomKeyStore), all without
// an operator's reconnect. A proxy that comes back refusing the store's
// credential is the store's true error: FAILED with INVALID_CREDENTIALS.
func TestRestartDuringProxyOutage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pk := filepath.Join(dir, "pki")
	proxyRun(t, "dev-cert", "--hostname", "localhost,127.0.0.1", "--out-dir", pk)
	keyFile := filepath.Join(dir, "keys.json")
	proxyRun(t, "keys", "create", "--keys-file", keyFile, "--id", "k1", "--kdf-iterations", "2000")
	conf := filepath.Join(dir, "xks-proxy.toml")
	// start runs xks-proxy at addr accepting the credential (akid, sec).
	start := func(addr, sec string) *proxy {
		t.Helper()
		sf := writeFile(t, filepath.Join(dir, "secret"), sec)
		writeFile(t, conf, strings.NewReplacer("PKI", pk, "KEYS", keyFile, "AKID", akid, "SECRET", sf, "PREFIX", "").Replace(prefixConfig))
		return e2etest.StartProxyAt(t, proxyBin, addr, []string{"XKS_PROXY_KEYS_PASSPHRASE=" + pass}, "--config", conf)
	}
	p := start(e2etest.FreeAddr(t), secret)
	// The resumed store's retry runs every --hsm-probe-interval.
	args := []string{"--xks-ca-bundle", filepath.Join(pk, "ca.pem"), "--xks-health-interval", "0", "--hsm-probe-interval", "250ms"}
	data := filepath.Join(dir, "data")
	k := startKMSDAt(t, data, args...)
	id, errs, code := k.createStore(storeReq("outage", "PUBLIC_ENDPOINT", "https://localhost:"+p.Port(), "/kms/xks/v1", akid, secret))
	if code != 0 {
		t.Fatalf("create: %s", errs)
	}
	k.aws(connectArgs(id)...)
	if e := k.settle(id)[id]; e["ConnectionState"] != "CONNECTED" {
		t.Fatalf("connect: %v", e)
	}
	xk := k.aws("kms", "create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", id, "--xks-key-id", "k1")["KeyMetadata"].(map[string]any)["KeyId"].(string)
	ctx := context.Background()
	msg := []byte("made before the crash and the outage")
	enc, err := k.sdk().Encrypt(ctx, &kms.EncryptInput{KeyId: &xk, Plaintext: msg})
	if err != nil {
		t.Fatal(err)
	}
	connected := func(what string) {
		t.Helper()
		if e := k.settle(id)[id]; e["ConnectionState"] != "CONNECTED" || e["ConnectionErrorCode"] != nil {
			t.Fatalf("store %s: %v %v, want CONNECTED", what, e["ConnectionState"], e["ConnectionErrorCode"])
		}
	}
	logHas := func(s string) bool {
		b, _ := os.ReadFile(k.log)
		return strings.Contains(string(b), s)
	}
	// crash kills kmsd and stops the proxy, then starts kmsd again.
	crash := func() {
		t.Helper()
		k.kill()
		p.Stop()
		k = startKMSDAt(t, data, args...)
	}

	crash()
	connected("resumed with its proxy down")
	if !logHas(`msg="keystore: resumed CONNECTED, but the backing cannot be reached; retrying" store=` + id + ` code=XKS_PROXY_NOT_REACHABLE`) {
		t.Fatalf("kmsd's log does not tell the resumed store's unreachable proxy:\n%s", k.proc.Log())
	}
	c := k.sdk()
	_, err = c.Encrypt(ctx, &kms.EncryptInput{KeyId: &xk, Plaintext: msg})
	wantAPIError(t, "encrypt with the proxy down", err, "KMSInvalidStateException", msgUnreachable)
	if ks := k.aws("kms", "describe-key", "--key-id", xk)["KeyMetadata"].(map[string]any)["KeyState"]; ks != "Enabled" {
		t.Fatalf("key state with the proxy down: %v, want Enabled (its store is CONNECTED)", ks)
	}
	time.Sleep(time.Second) // several retries against the absent proxy
	connected("after retries against its absent proxy")

	p = start(p.Addr, secret)
	if d, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob}); err != nil || !bytes.Equal(d.Plaintext, msg) {
		t.Fatalf("decrypt of a ciphertext from before the crash, once the proxy is back: %v", err)
	}
	waitFor(t, "kmsd's retry to reach the returned proxy", func() bool {
		return logHas(`msg="keystore: resumed store logged in to its backing again" store=` + id)
	})
	if n := strings.Count(p.Log.String(), `"kmsOperation":"ConnectCustomKeyStore"`); n != 1 {
		t.Fatalf("the returned proxy saw %d connect health checks, want 1", n)
	}
	connected("once its proxy is back")
	out := base64.StdEncoding.EncodeToString([]byte("made after the outage"))
	cb := k.aws("kms", "encrypt", "--key-id", xk, "--plaintext", out)["CiphertextBlob"].(string)
	raw, _ := base64.StdEncoding.DecodeString(cb)
	if d, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: raw}); err != nil || base64.StdEncoding.EncodeToString(d.Plaintext) != out {
		t.Fatalf("round trip after the outage: %v", err)
	}

	// Again, and the proxy comes back with another credential: the store's
	// true error.
	crash()
	connected("resumed with its proxy down, again")
	p = start(p.Addr, "AnotherSecretOfTheRightLengthForTheProxy0123456")
	if e := waitStore(t, k, id, "FAILED"); e["ConnectionErrorCode"] != "INVALID_CREDENTIALS" {
		t.Fatalf("proxy back with another credential: %v, want FAILED INVALID_CREDENTIALS", e)
	}
	_, err = k.sdk().Encrypt(ctx, &kms.EncryptInput{KeyId: &xk, Plaintext: msg})
	if apiCode(err) != "KMSInvalidStateException" {
		t.Fatalf("encrypt in a FAILED store: %v, want KMSInvalidStateException", err)
	}
}

// waitStore polls store id until its ConnectionState is state.
func waitStore(t *testing.T, k *kmsd, id, state string) map[string]any {
	t.Helper()
	var e map[string]any
	waitFor(t, "store "+id+" "+state, func() bool {
		e = k.store(id)
		return e["ConnectionState"] == state
	})
	return e
}
