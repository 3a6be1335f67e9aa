package keytypes

import (
	"context"
	"crypto/sha3"
	"encoding/asn1"
	"errors"
	"testing"

	"filippo.io/mldsa"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/cloudflare/circl/sign/mldsa/mldsa44"
	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
)

// mlDSAKey is the encoded ML-DSA public key inside the DER SPKI that
// get-public-key returned, after its OID is checked.
func mlDSAKey(t *testing.T, spec string, spki []byte) []byte {
	t.Helper()
	oids := map[string]asn1.ObjectIdentifier{
		"ML_DSA_44": {2, 16, 840, 1, 101, 3, 4, 3, 17},
		"ML_DSA_65": {2, 16, 840, 1, 101, 3, 4, 3, 18},
		"ML_DSA_87": {2, 16, 840, 1, 101, 3, 4, 3, 19},
	}
	var info struct {
		Alg struct{ OID asn1.ObjectIdentifier }
		Key asn1.BitString
	}
	if _, err := asn1.Unmarshal(spki, &info); err != nil || !info.Alg.OID.Equal(oids[spec]) {
		t.Fatalf("%s SPKI: %v, OID %v", spec, err, info.Alg.OID)
	}
	return info.Key.RightAlign()
}

// externalMu computes μ for msg as a KMS client does (spec §5.1):
// μ = SHAKE256(tr ‖ 0x00 ‖ 0x00 ‖ M, 64), tr = SHAKE256(public key, 64).
func externalMu(pub, msg []byte) []byte {
	tr := sha3.SumSHAKE256(pub, 64)
	return sha3.SumSHAKE256(append(append(tr, 0, 0), msg...), 64)
}

// offlineMLDSA checks an ML-DSA signature over msg, empty context, with
// circl and with filippo.io/mldsa.
func offlineMLDSA(t *testing.T, spec string, pub, msg, sig []byte) {
	t.Helper()
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
		t.Errorf("%s: circl does not verify the signature over M", spec)
	}
	params := map[string]mldsa.Parameters{"ML_DSA_44": mldsa.MLDSA44(), "ML_DSA_65": mldsa.MLDSA65(), "ML_DSA_87": mldsa.MLDSA87()}
	p, err := mldsa.NewPublicKey(params[spec], pub)
	if err == nil {
		err = mldsa.Verify(p, msg, sig, nil)
	}
	if err != nil {
		t.Errorf("%s: filippo.io/mldsa does not verify the signature over M: %v", spec, err)
	}
}

// TestMLDSAExternalMu signs a μ the client computed, with MessageType
// EXTERNAL_MU, and checks offline that the signature is an ML-DSA
// signature over the message itself. The Go SDK drives every parameter
// set, since the Debian aws CLI's model (2.9) predates EXTERNAL_MU; the
// CLI signs one μ too, for botocore sends an enum value its model does
// not list as it is. Verify takes the signature as RAW over M and as
// EXTERNAL_MU over μ, and refuses it over another μ.
func TestMLDSAExternalMu(t *testing.T) {
	e := start(t)
	c := e.sdk()
	ctx := context.Background()
	msg := []byte("kmsd e2e: a message whose μ KMS signs")
	for _, spec := range []types.KeySpec{types.KeySpecMlDsa44, types.KeySpecMlDsa65, types.KeySpecMlDsa87} {
		t.Run(string(spec)+"/sdk", func(t *testing.T) {
			k, err := c.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: spec, KeyUsage: types.KeyUsageTypeSignVerify})
			if err != nil {
				t.Fatal(err)
			}
			id := k.KeyMetadata.KeyId
			pk, err := c.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: id})
			if err != nil {
				t.Fatal(err)
			}
			pub := mlDSAKey(t, string(spec), pk.PublicKey)
			out, err := c.Sign(ctx, &kms.SignInput{KeyId: id, Message: externalMu(pub, msg),
				MessageType: types.MessageTypeExternalMu, SigningAlgorithm: types.SigningAlgorithmSpecMlDsaShake256})
			if err != nil {
				t.Fatalf("Sign EXTERNAL_MU: %v", err)
			}
			offlineMLDSA(t, string(spec), pub, msg, out.Signature)
			v, err := c.Verify(ctx, &kms.VerifyInput{KeyId: id, Message: msg, MessageType: types.MessageTypeRaw,
				Signature: out.Signature, SigningAlgorithm: types.SigningAlgorithmSpecMlDsaShake256})
			if err != nil || !v.SignatureValid {
				t.Fatalf("Verify RAW over M: %+v, %v", v, err)
			}
			v, err = c.Verify(ctx, &kms.VerifyInput{KeyId: id, Message: externalMu(pub, msg), MessageType: types.MessageTypeExternalMu,
				Signature: out.Signature, SigningAlgorithm: types.SigningAlgorithmSpecMlDsaShake256})
			if err != nil || !v.SignatureValid {
				t.Fatalf("Verify EXTERNAL_MU over μ: %+v, %v", v, err)
			}
			var invalid *types.KMSInvalidSignatureException
			_, err = c.Verify(ctx, &kms.VerifyInput{KeyId: id, Message: externalMu(pub, []byte("another message")), MessageType: types.MessageTypeExternalMu,
				Signature: out.Signature, SigningAlgorithm: types.SigningAlgorithmSpecMlDsaShake256})
			if !errors.As(err, &invalid) {
				t.Fatalf("Verify EXTERNAL_MU over another μ: %v, want KMSInvalidSignatureException", err)
			}
		})
	}
	t.Run("ML_DSA_65/cli", func(t *testing.T) {
		id, der, _ := e.key("ML_DSA_65", "SIGN_VERIFY")
		pub := mlDSAKey(t, "ML_DSA_65", der)
		mu := e.file("mu", externalMu(pub, msg))
		sig := e.sign(id, "ML_DSA_SHAKE_256", "EXTERNAL_MU", mu)
		offlineMLDSA(t, "ML_DSA_65", pub, msg, sig)
		e.fails("ValidationException", "kms", "sign", "--key-id", id, "--message", "fileb://"+e.file("mu63", make([]byte, 63)),
			"--message-type", "EXTERNAL_MU", "--signing-algorithm", "ML_DSA_SHAKE_256")
	})
}
