package xks

import (
	"bytes"
	"context"
	"encoding/base64"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms"
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
