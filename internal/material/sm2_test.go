package material

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"testing"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
)

// sm2Pair generates an SM2 key and returns its encodings and the key as
// gmsm sees it, for offline checks.
func sm2Pair(t *testing.T) (priv, pub []byte, k *sm2.PrivateKey) {
	t.Helper()
	priv, pub, err := Generate("SM2", rand.Reader)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	p, err := smx509.ParsePKCS8PrivateKey(priv)
	if err != nil {
		t.Fatalf("the private encoding is not PKCS #8: %v", err)
	}
	k, ok := p.(*sm2.PrivateKey)
	if !ok {
		t.Fatalf("the private encoding is a %T, not an SM2 key", p)
	}
	return priv, pub, k
}

// TestSM2Encodings checks the SPKI of spec §2.2 (id-ecPublicKey, named
// curve 1.2.156.10197.1.301, uncompressed point) and that Public derives
// the same bytes as Generate.
func TestSM2Encodings(t *testing.T) {
	priv, pub, k := sm2Pair(t)
	again, err := Public("SM2", priv)
	if err != nil || !bytes.Equal(again, pub) {
		t.Fatalf("Public: %v; differs from Generate's: %v", err, !bytes.Equal(again, pub))
	}
	var info spki
	if rest, err := asn1.Unmarshal(pub, &info); err != nil || len(rest) != 0 {
		t.Fatalf("SPKI: %v", err)
	}
	var curve asn1.ObjectIdentifier
	if _, err := asn1.Unmarshal(info.Algorithm.Parameters.FullBytes, &curve); err != nil {
		t.Fatalf("parameters: %v", err)
	}
	if !info.Algorithm.Algorithm.Equal(oidECPublicKey) || !curve.Equal(asn1.ObjectIdentifier{1, 2, 156, 10197, 1, 301}) {
		t.Errorf("algorithm %v, curve %v; want id-ecPublicKey, 1.2.156.10197.1.301", info.Algorithm.Algorithm, curve)
	}
	point := info.PublicKey.RightAlign()
	if len(point) != 65 || point[0] != 4 || k.X.Cmp(new(big.Int).SetBytes(point[1:33])) != 0 || k.Y.Cmp(new(big.Int).SetBytes(point[33:])) != 0 {
		t.Errorf("subjectPublicKey is not the uncompressed point of the key")
	}
	if _, err := Public("SM2", []byte{0x30, 0}); !errors.Is(err, ErrKey) {
		t.Errorf("Public of garbage: %v, want ErrKey", err)
	}
}

// TestSM2DSA checks the two message types of spec §5.1: RAW is signed as
// e = SM3(Z_A ‖ M) with the default ID, so a kmsd signature verifies with
// gmsm's GM/T 0003 verifier over M, and gmsm's signature over M verifies
// in kmsd given e.
func TestSM2DSA(t *testing.T) {
	priv, pub, k := sm2Pair(t)
	msg := []byte("kmsd signs this with SM2")
	e, err := SM2Digest(pub, msg)
	if err != nil || len(e) != 32 {
		t.Fatalf("SM2Digest: %d bytes, %v", len(e), err)
	}
	sig, err := Sign("SM2", priv, "SM2DSA", "DIGEST", e, rand.Reader)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if !sm2.VerifyASN1WithSM2(&k.PublicKey, []byte("1234567812345678"), msg, sig) {
		t.Error("gmsm does not verify kmsd's signature over the message with the default ID")
	}
	var rs struct{ R, S asn1.RawValue }
	if rest, err := asn1.Unmarshal(sig, &rs); err != nil || len(rest) != 0 || rs.R.Tag != asn1.TagInteger || rs.S.Tag != asn1.TagInteger {
		t.Errorf("signature is not DER SEQUENCE{r, s}: %v", err)
	}
	if ok, err := Verify("SM2", pub, "SM2DSA", e, sig); !ok || err != nil {
		t.Errorf("Verify = %v, %v; want true", ok, err)
	}
	offline, err := k.SignWithSM2(rand.Reader, nil, msg) // nil: the default ID
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := Verify("SM2", pub, "SM2DSA", e, offline); !ok {
		t.Error("kmsd does not verify gmsm's signature")
	}
	bad := bytes.Clone(e)
	bad[0] ^= 1
	if ok, _ := Verify("SM2", pub, "SM2DSA", bad, sig); ok {
		t.Error("Verify accepted a tampered digest")
	}
	if ok, _ := Verify("SM2", pub, "SM2DSA", e, sig[:len(sig)-1]); ok {
		t.Error("Verify accepted a truncated signature")
	}
	_, other, _ := sm2Pair(t)
	if ok, _ := Verify("SM2", other, "SM2DSA", e, sig); ok {
		t.Error("Verify accepted a signature under another key")
	}
	if _, err := Sign("SM2", priv, "ECDSA_SHA_256", "DIGEST", e, rand.Reader); !errors.Is(err, ErrAlgorithm) {
		t.Errorf("Sign with ECDSA on an SM2 key: %v, want ErrAlgorithm", err)
	}
	if _, err := Verify("SM2", pub, "ECDSA_SHA_256", e, sig); !errors.Is(err, ErrAlgorithm) {
		t.Errorf("Verify with ECDSA on an SM2 key: %v, want ErrAlgorithm", err)
	}
	_, p256, _ := Generate("ECC_NIST_P256", rand.Reader)
	if _, err := SM2Digest(p256, msg); !errors.Is(err, ErrKey) {
		t.Errorf("SM2Digest with a P-256 key: %v, want ErrKey", err)
	}
}

// TestSM2PKE round-trips SM2PKE, decrypts ciphertexts made offline in both
// C1C3C2 forms, and sorts failures into ErrCiphertext and ErrDecrypt.
func TestSM2PKE(t *testing.T) {
	priv, pub, k := sm2Pair(t)
	if EncryptLimit("SM2", "SM2PKE") != 1024 || EncryptLimit("SM2", "RSAES_OAEP_SHA_1") != 0 || EncryptLimit("RSA_2048", "RSAES_OAEP_SHA_256") != 190 {
		t.Errorf("EncryptLimit: wrong limits")
	}
	pt := bytes.Repeat([]byte{0xa5}, SM2PKELimit)
	ct, err := Encrypt("SM2", pub, "SM2PKE", pt, rand.Reader)
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	var c sm2Ciphertext
	if rest, err := asn1.Unmarshal(ct, &c); err != nil || len(rest) != 0 || len(c.Hash) != 32 || len(c.Ciphertext) != len(pt) {
		t.Errorf("ciphertext is not DER SEQUENCE{x, y, C3, C2}: %v", err)
	}
	if got, err := sm2.Decrypt(k, ct); err != nil || !bytes.Equal(got, pt) {
		t.Errorf("gmsm does not decrypt kmsd's ciphertext: %v", err)
	}
	if got, err := Decrypt("SM2", priv, "SM2PKE", ct); err != nil || !bytes.Equal(got, pt) {
		t.Errorf("Decrypt: %v", err)
	}
	msg := []byte("made offline")
	asn1CT, err := sm2.EncryptASN1(rand.Reader, &k.PublicKey, msg)
	if err != nil {
		t.Fatal(err)
	}
	plainCT, err := sm2.Encrypt(rand.Reader, &k.PublicKey, msg, sm2.NewPlainEncrypterOpts(sm2.MarshalUncompressed, sm2.C1C3C2))
	if err != nil {
		t.Fatal(err)
	}
	for name, ct := range map[string][]byte{"asn1": asn1CT, "plain C1C3C2": plainCT} {
		if got, err := Decrypt("SM2", priv, "SM2PKE", ct); err != nil || !bytes.Equal(got, msg) {
			t.Errorf("%s: Decrypt = %q, %v", name, got, err)
		}
	}
	tampered := bytes.Clone(asn1CT)
	tampered[len(tampered)-1] ^= 1
	otherPriv, _, _ := sm2Pair(t)
	for name, tc := range map[string]struct {
		priv, ct []byte
		want     error
	}{
		"tampered C2":  {priv, tampered, ErrDecrypt},
		"other key":    {otherPriv, asn1CT, ErrDecrypt},
		"garbage":      {priv, []byte("not a ciphertext at all"), ErrCiphertext},
		"short plain":  {priv, plainCT[:97], ErrCiphertext},
		"trailing DER": {priv, append(bytes.Clone(asn1CT), 0), ErrCiphertext},
	} {
		if _, err := Decrypt("SM2", tc.priv, "SM2PKE", tc.ct); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	if _, err := Encrypt("SM2", pub, "RSAES_OAEP_SHA_256", msg, rand.Reader); !errors.Is(err, ErrAlgorithm) {
		t.Errorf("Encrypt with OAEP on an SM2 key: %v, want ErrAlgorithm", err)
	}
}

// TestSM2ECDH checks ECDH on the SM2 curve: two keys agree, the secret is
// the 32-byte x-coordinate gmsm's ECDH gives, and a peer key of another
// curve or of no curve is refused.
func TestSM2ECDH(t *testing.T) {
	privA, pubA, kA := sm2Pair(t)
	privB, pubB, _ := sm2Pair(t)
	ab, err := ECDH("SM2", privA, pubB)
	if err != nil {
		t.Fatalf("ECDH: %v", err)
	}
	ba, err := ECDH("SM2", privB, pubA)
	if err != nil || !bytes.Equal(ab, ba) || len(ab) != 32 {
		t.Fatalf("secrets differ or are not 32 bytes: %x, %x, %v", ab, ba, err)
	}
	peer, _ := smx509.ParsePKIXPublicKey(pubB)
	ep, _ := sm2.PublicKeyToECDH(peer.(*ecdsa.PublicKey))
	ek, _ := kA.ECDH()
	if want, _ := ek.ECDH(ep); !bytes.Equal(ab, want) {
		t.Errorf("secret %x, gmsm says %x", ab, want)
	}
	_, p256, _ := Generate("ECC_NIST_P256", rand.Reader)
	if _, err := ECDH("SM2", privA, p256); !errors.Is(err, ErrPeerCurve) {
		t.Errorf("P-256 peer: %v, want ErrPeerCurve", err)
	}
	if _, err := ECDH("SM2", privA, []byte("junk")); !errors.Is(err, ErrPeerKey) {
		t.Errorf("garbage peer: %v, want ErrPeerKey", err)
	}
	ed, _ := marshalSPKI(pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 3, 101, 112}}, make([]byte, 32))
	if _, err := ECDH("SM2", privA, ed); err == nil {
		t.Error("an Ed25519 peer key was accepted")
	}
}

// TestSM2DataKeyPair checks GeneratePair's SM2 pair: PKCS #8 and SPKI of
// one key.
func TestSM2DataKeyPair(t *testing.T) {
	priv, pub, err := GeneratePair("SM2", rand.Reader)
	if err != nil {
		t.Fatalf("GeneratePair: %v", err)
	}
	p, err := smx509.ParsePKCS8PrivateKey(priv)
	if err != nil {
		t.Fatalf("PKCS #8: %v", err)
	}
	k := p.(*sm2.PrivateKey)
	want, _ := smx509.MarshalPKIXPublicKey(&k.PublicKey)
	if !bytes.Equal(pub, want) {
		t.Error("PublicKey is not the private key's public key")
	}
}

// FuzzSM2Decrypt feeds arbitrary bytes to SM2PKE decryption: it must
// answer ErrCiphertext or ErrDecrypt, never panic, and open only what was
// encrypted under the key.
func FuzzSM2Decrypt(f *testing.F) {
	priv, pub, err := Generate("SM2", rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	ct, err := Encrypt("SM2", pub, "SM2PKE", []byte("seed"), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ct)
	f.Add(append([]byte{4}, make([]byte, 100)...))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		pt, err := Decrypt("SM2", priv, "SM2PKE", b)
		switch {
		case err == nil && !bytes.Equal(b, ct):
			t.Fatalf("decrypted bytes that were not encrypted here: %x → %q", b, pt)
		case err != nil && !errors.Is(err, ErrCiphertext) && !errors.Is(err, ErrDecrypt):
			t.Fatalf("unexpected error %v", err)
		}
	})
}
