package kms

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/pem"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/xks"
)

// TestDoubleEncryption proves spec §10.8 on the bytes: a ciphertext of a
// key in an external key store opens only with both keys. The proxy is
// the real XKS handler over HTTPS with a key file whose external key
// material the test chose, so "the proxy's key alone" is that material
// with the spec's AES-GCM construction, and "kmsd's key alone" is the
// KMS key's own material from the catalog.
func TestDoubleEncryption(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)

	// The proxy: one external key "ext" with known material.
	material := make([]byte, 32)
	rand.Read(material)
	h := xksProxy(t, map[string][]byte{"ext": material})
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)

	// kmsd with an external key store on that proxy, connected.
	st := f.db // the catalog's database, as in kmsd
	ext := &keystore.External{CABundle: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}),
		Timeout: 5 * time.Second}
	m, err := keystore.New(ctx, st, f.barrier, keystore.Config{Backings: map[string]keystore.Backing{keystore.TypeExternal: ext}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	f.svc.SetKeyStores(m, &fakeClusters{}, nil)
	f.svc.SetExternal(ext)
	cs, err := f.svc.CreateCustomKeyStore(ctx, f.caller, xksReq("xks", keystore.XKSPublic, "https://"+srv.Listener.Addr().String(), ""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.ConnectCustomKeyStore(ctx, f.caller, &kmsapi.ConnectCustomKeyStoreRequest{CustomKeyStoreId: cs.CustomKeyStoreId}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		d, err := f.svc.DescribeCustomKeyStores(ctx, f.caller, &kmsapi.DescribeCustomKeyStoresRequest{CustomKeyStoreId: cs.CustomKeyStoreId})
		if err != nil {
			t.Fatal(err)
		}
		if s := *d.CustomKeyStores[0].ConnectionState; s == "CONNECTED" {
			break
		} else if s == "FAILED" || time.Now().After(deadline) {
			t.Fatalf("store %s: %v", s, d.CustomKeyStores[0].ConnectionErrorCode)
		}
	}
	ck, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Origin: str("EXTERNAL_KEY_STORE"),
		CustomKeyStoreId: cs.CustomKeyStoreId, XksKeyId: str("ext")})
	if err != nil {
		t.Fatal(err)
	}
	id := *ck.KeyMetadata.KeyId

	msg := []byte("only both keys together open this")
	ec := map[string]string{"purpose": "double encryption"}
	blob := f.encrypt(t, id, msg, ec)
	if got, err := f.decrypt(blob, ec); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("round trip through kmsd: %q, %v", got, err)
	}
	if bytes.Contains(blob, msg) {
		t.Fatal("the blob holds the plaintext")
	}
	b, err := keys.ParseBlob(blob)
	if err != nil || b.External == nil {
		t.Fatalf("blob: %+v, %v", b, err)
	}
	x := b.External

	// kmsd's key alone: its material is right there, but what the blob
	// carries is the proxy's ciphertext, which it does not open — not as a
	// whole, not with the proxy's IV as nonce.
	k, err := f.cat.Key(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	kmsdKey, err := f.cat.AEAD(k, b.KeyVersion)
	if err != nil {
		t.Fatal(err)
	}
	aad := keys.AppendAAD(nil, b.Header, ec)
	sealed := append(append([]byte{}, x.Ciphertext...), x.Tag...)
	if _, err := kmsdKey.Open(nil, sealed[:keys.NonceSize], sealed[keys.NonceSize:], aad); err == nil {
		t.Fatal("kmsd's key alone opened the blob's ciphertext")
	}
	if len(x.IV) == kmsdKey.NonceSize() {
		if _, err := kmsdKey.Open(nil, x.IV, sealed, aad); err == nil {
			t.Fatal("kmsd's key alone opened the blob's ciphertext with the proxy's IV")
		}
	}

	// The proxy's key alone: the outer layer opens (spec AAD construction),
	// and what is inside is kmsd's ciphertext, not the plaintext.
	block, _ := aes.NewCipher(material)
	gcm, _ := cipher.NewGCMWithNonceSize(block, len(x.IV))
	outerAAD, err := xks.EffectiveAAD(keys.ExternalAAD(b.Header, ec), x.Metadata)
	if err != nil {
		t.Fatal(err)
	}
	inner, err := gcm.Open(nil, x.IV, sealed, outerAAD)
	if err != nil {
		t.Fatalf("the external key does not open the outer layer: %v", err)
	}
	if bytes.Contains(inner, msg) || len(inner) != keys.NonceSize+len(msg)+keys.TagSize {
		t.Fatalf("the outer layer hides the plaintext directly (%d bytes inside)", len(inner))
	}

	// Both: kmsd's key opens what the external key revealed.
	pt, err := kmsdKey.Open(nil, inner[:keys.NonceSize], inner[keys.NonceSize:], aad)
	if err != nil || !bytes.Equal(pt, msg) {
		t.Fatalf("both keys: %q, %v", pt, err)
	}
}
