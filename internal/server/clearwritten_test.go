package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"testing"

	"github.com/kmsd/kmsd/internal/kms"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/sigv4"
)

// TestPrivateKeyClearedOnceWritten: GenerateDataKeyPair's answer carries
// a working private key (PKCS #8 of the public key it answers with), and
// once the answer is written the response's plaintext private key is
// zeros — the copy the audit record still references is cleared.
func TestPrivateKeyClearedOnceWritten(t *testing.T) {
	a := newTestAPI(t)
	var s sigv4.Signer
	code, created := a.call(t, "CreateKey", `{}`, s, "", nil)
	if code != 200 {
		t.Fatalf("CreateKey: %d %v", code, created)
	}
	id := created["KeyMetadata"].(map[string]any)["KeyId"].(string)

	orig := handlers["GenerateDataKeyPair"]
	t.Cleanup(func() { handlers["GenerateDataKeyPair"] = orig })
	var resp *kmsapi.GenerateDataKeyPairResponse
	h := orig
	h.call = func(ctx context.Context, svc *kms.Service, c *kms.Caller, in any) (any, error) {
		out, err := orig.call(ctx, svc, c, in)
		resp, _ = out.(*kmsapi.GenerateDataKeyPairResponse)
		return out, err
	}
	handlers["GenerateDataKeyPair"] = h

	code, out := a.call(t, "GenerateDataKeyPair", `{"KeyId":"`+id+`","KeyPairSpec":"ECC_NIST_P256"}`, s, "", nil)
	if code != 200 {
		t.Fatalf("GenerateDataKeyPair: %d %v", code, out)
	}
	der, err := base64.StdEncoding.DecodeString(out["PrivateKeyPlaintext"].(string))
	if err != nil {
		t.Fatal(err)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		t.Fatalf("the written private key does not parse: %v", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.(*ecdsa.PrivateKey).PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if got := out["PublicKey"].(string); got != base64.StdEncoding.EncodeToString(pub) {
		t.Errorf("PublicKey %s is not the private key's %x", got, pub)
	}
	if resp == nil || len(resp.PrivateKeyPlaintext) != len(der) {
		t.Fatalf("response not captured, or its private key cut: %v", resp)
	}
	if !bytes.Equal(resp.PrivateKeyPlaintext, make([]byte, len(der))) {
		t.Error("the response's plaintext private key was not cleared once written")
	}
	if len(resp.PublicKey) == 0 || bytes.Equal(resp.PublicKey, make([]byte, len(resp.PublicKey))) {
		t.Error("the public key was cleared with the private key")
	}
}
