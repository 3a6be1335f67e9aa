package kms

import (
	"context"
	"crypto/sha3"
	"encoding/asn1"
	"testing"

	"filippo.io/mldsa"
	"github.com/cloudflare/circl/sign/mldsa/mldsa44"
	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// externalMu computes μ for message msg under the ML-DSA public key in
// spki as a client of KMS does (spec §5.1): μ = SHAKE256(tr ‖ 0x00 ‖
// 0x00 ‖ M, 64) with tr = SHAKE256(encoded public key, 64). It also
// returns the encoded public key.
func externalMu(t *testing.T, spki, msg []byte) (mu, pub []byte) {
	t.Helper()
	var info struct {
		Alg asn1.RawValue
		Key asn1.BitString
	}
	if _, err := asn1.Unmarshal(spki, &info); err != nil {
		t.Fatal(err)
	}
	pub = info.Key.RightAlign()
	tr := sha3.SumSHAKE256(pub, 64)
	return sha3.SumSHAKE256(append(append(tr, 0, 0), msg...), 64), pub
}

// verifyMLDSA checks an ML-DSA signature over msg, empty context, with
// circl and with filippo.io/mldsa, two implementations apart from the
// server's path; it names those that refuse it.
func verifyMLDSA(spec string, pub, msg, sig []byte) []string {
	var refused []string
	var ok bool
	switch spec {
	case "ML_DSA_44":
		var p mldsa44.PublicKey
		ok = p.UnmarshalBinary(pub) == nil && mldsa44.Verify(&p, msg, nil, sig)
	case "ML_DSA_65":
		var p mldsa65.PublicKey
		ok = p.UnmarshalBinary(pub) == nil && mldsa65.Verify(&p, msg, nil, sig)
	case "ML_DSA_87":
		var p mldsa87.PublicKey
		ok = p.UnmarshalBinary(pub) == nil && mldsa87.Verify(&p, msg, nil, sig)
	}
	if !ok {
		refused = append(refused, "circl")
	}
	params := map[string]mldsa.Parameters{"ML_DSA_44": mldsa.MLDSA44(), "ML_DSA_65": mldsa.MLDSA65(), "ML_DSA_87": mldsa.MLDSA87()}
	p, err := mldsa.NewPublicKey(params[spec], pub)
	if err != nil || mldsa.Verify(p, msg, sig, nil) != nil {
		refused = append(refused, "filippo.io/mldsa")
	}
	return refused
}

// TestSignExternalMu signs a μ computed by the client, as spec §5.1
// describes, and checks the signature is an ordinary ML-DSA signature
// over the message: circl, filippo.io/mldsa and kmsd's own Verify (RAW
// over M, and EXTERNAL_MU over μ) accept it, and Verify refuses it over
// another message or another μ.
func TestSignExternalMu(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	msg := []byte("a message whose μ kmsd signs")
	alg, mu, raw := "ML_DSA_SHAKE_256", "EXTERNAL_MU", "RAW"
	for _, spec := range []string{"ML_DSA_44", "ML_DSA_65", "ML_DSA_87"} {
		t.Run(spec, func(t *testing.T) {
			m := f.createSpec(t, spec, "SIGN_VERIFY")
			pk, err := f.svc.GetPublicKey(ctx, f.caller, &kmsapi.GetPublicKeyRequest{KeyId: m.KeyId})
			if err != nil {
				t.Fatalf("GetPublicKey: %v", err)
			}
			in, pub := externalMu(t, pk.PublicKey, msg)
			out, err := f.svc.Sign(ctx, f.caller, &kmsapi.SignRequest{KeyId: m.KeyId, Message: in, MessageType: &mu, SigningAlgorithm: &alg})
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if *out.KeyId != *m.Arn || *out.SigningAlgorithm != alg {
				t.Errorf("Sign answered KeyId %s, SigningAlgorithm %s", *out.KeyId, *out.SigningAlgorithm)
			}
			if refused := verifyMLDSA(spec, pub, msg, out.Signature); refused != nil {
				t.Errorf("%v refuse the signature over M", refused)
			}
			vr, err := f.svc.Verify(ctx, f.caller, &kmsapi.VerifyRequest{KeyId: m.KeyId, Message: msg, MessageType: &raw, Signature: out.Signature, SigningAlgorithm: &alg})
			if err != nil || !*vr.SignatureValid {
				t.Fatalf("Verify RAW over M: %+v, %v", vr, err)
			}
			_, err = f.svc.Verify(ctx, f.caller, &kmsapi.VerifyRequest{KeyId: m.KeyId, Message: []byte("another message"), MessageType: &raw, Signature: out.Signature, SigningAlgorithm: &alg})
			wantMessage(t, err, "KMSInvalidSignatureException", "")
			vm, err := f.svc.Verify(ctx, f.caller, &kmsapi.VerifyRequest{KeyId: m.KeyId, Message: in, MessageType: &mu, Signature: out.Signature, SigningAlgorithm: &alg})
			if err != nil || !*vm.SignatureValid || *vm.KeyId != *m.Arn {
				t.Fatalf("Verify EXTERNAL_MU over μ: %+v, %v", vm, err)
			}
			other, _ := externalMu(t, pk.PublicKey, []byte("another message"))
			_, err = f.svc.Verify(ctx, f.caller, &kmsapi.VerifyRequest{KeyId: m.KeyId, Message: other, MessageType: &mu, Signature: out.Signature, SigningAlgorithm: &alg})
			wantMessage(t, err, "KMSInvalidSignatureException", "")
			// A RAW signature of M and a μ signature of M are the same kind.
			rs, err := f.svc.Sign(ctx, f.caller, &kmsapi.SignRequest{KeyId: m.KeyId, Message: msg, MessageType: &raw, SigningAlgorithm: &alg})
			if err != nil {
				t.Fatalf("Sign RAW: %v", err)
			}
			if refused := verifyMLDSA(spec, pub, msg, rs.Signature); refused != nil {
				t.Errorf("%v refuse the RAW signature over M", refused)
			}
			if vm, err := f.svc.Verify(ctx, f.caller, &kmsapi.VerifyRequest{KeyId: m.KeyId, Message: in, MessageType: &mu, Signature: rs.Signature, SigningAlgorithm: &alg}); err != nil || !*vm.SignatureValid {
				t.Fatalf("Verify EXTERNAL_MU of the RAW signature: %+v, %v", vm, err)
			}
		})
	}
	t.Run("dry run", func(t *testing.T) {
		m := f.createSpec(t, "ML_DSA_44", "SIGN_VERIFY")
		dry := true
		_, err := f.svc.Sign(ctx, f.caller, &kmsapi.SignRequest{KeyId: m.KeyId, Message: make([]byte, 64), MessageType: &mu, SigningAlgorithm: &alg, DryRun: &dry})
		wantMessage(t, err, "DryRunOperationException", "The request would have succeeded, but the DryRun option is set.")
	})
}
