package kms

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"slices"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/material"
	"github.com/kmsd/kmsd/internal/policy"
)

// Sign signs a message (RAW, hashed here with the algorithm's hash), a
// digest (DIGEST, never hashed again) or ML-DSA's μ (EXTERNAL_MU, signed as
// it is) with an asymmetric SIGN_VERIFY key.
func (s *Service) Sign(ctx context.Context, c *Caller, in *kmsapi.SignRequest) (*kmsapi.SignResponse, error) {
	k, alg, input, err := s.signingKey(ctx, c, "kms:Sign", in.KeyId, in.SigningAlgorithm, in.MessageType, in.Message)
	if err != nil {
		return nil, err
	}
	if err := dryRun(in.DryRun); err != nil {
		return nil, err
	}
	priv, err := s.privateKey(k)
	if err != nil {
		return nil, internal(err)
	}
	sig, err := priv.Sign(alg, messageType(in.MessageType), input, s.rand)
	if err != nil {
		return nil, internal(err)
	}
	return &kmsapi.SignResponse{KeyId: kmsapi.String(k.ARN()), Signature: sig, SigningAlgorithm: kmsapi.String(alg)}, nil
}

// signingKey makes the checks Sign and Verify share, in AWS's order (spec
// §1.4, §5.1): resolve, authorize, state, usage, algorithm, message type
// and digest length. It returns the key, the algorithm and the input the
// signature scheme takes.
func (s *Service) signingKey(ctx context.Context, c *Caller, action string, keyID, alg, mtype *string, msg []byte) (*catalog.Key, string, []byte, error) {
	k, err := s.resolveCross(ctx, c, *keyID)
	if err != nil {
		return nil, "", nil, err
	}
	mt := messageType(mtype)
	if err := s.authorizeKey(ctx, c, action, k, nil, both(aliasKey(*keyID), func(r *policy.Request) {
		r.Context[policy.KeySigningAlgorithm] = shared(*alg)
		r.Context[policy.KeyMessageType] = shared(mt)
	})); err != nil {
		return nil, "", nil, err
	}
	if err := usable(k); err != nil {
		return nil, "", nil, err
	}
	if err := checkUsage(k, keys.SignVerify, action); err != nil {
		return nil, "", nil, err
	}
	if err := chinaOnly(k.Region, *alg); err != nil {
		return nil, "", nil, err
	}
	info, _ := keys.Spec(k.KeySpec)
	if !slices.Contains(info.Signing, *alg) {
		return nil, "", nil, exc("InvalidKeyUsageException", "Algorithm "+*alg+" is incompatible with key spec "+k.KeySpec+".")
	}
	input, err := signingInput(*alg, mt, msg)
	if err != nil {
		return nil, "", nil, err
	}
	if *alg == "SM2DSA" && mt == "RAW" {
		// SM2DSA signs e = SM3(Z_A ‖ M), and Z_A depends on the public key.
		v := k.Version(k.Current)
		if v == nil || v.Public == nil {
			return nil, "", nil, internal(errNoPublicKey)
		}
		if input, err = material.SM2Digest(v.Public, msg); err != nil {
			return nil, "", nil, internal(err)
		}
	}
	return k, *alg, input, nil
}

// messageType is a request's MessageType, RAW when absent.
func messageType(mt *string) string {
	if mt == nil {
		return "RAW"
	}
	return *mt
}

// signingInput turns a Message of MessageType mt into what the signature
// scheme of alg takes (spec §5.1): RAW is hashed with the algorithm's hash
// (Ed25519 and ML-DSA take the message itself, and SM2DSA's Z_A-prefixed
// SM3 is done by the caller, which has the key); DIGEST is taken as it is,
// after its length is checked; for ED25519_PH_SHA_512 the 64 bytes are the
// message whose SHA-512 prehash is signed; EXTERNAL_MU is ML-DSA's μ,
// taken as it is after its length is checked.
//
// [U] AWS's texts for a MessageType the algorithm does not take are not
// recorded; kmsd's are below.
func signingInput(alg, mt string, msg []byte) ([]byte, error) {
	a, _ := keys.Signing(alg)
	switch mt {
	case "EXTERNAL_MU":
		if a.Scheme != keys.MLDSA {
			return nil, exc("ValidationException", "MessageType EXTERNAL_MU is valid only with signing algorithm ML_DSA_SHAKE_256.")
		}
		if len(msg) != 64 {
			return nil, exc("ValidationException", "An EXTERNAL_MU message must be 64 bytes long.")
		}
		return msg, nil
	case "DIGEST":
		if a.DigestLen == 0 {
			return nil, exc("ValidationException", "MessageType DIGEST is not valid for signing algorithm "+alg+".")
		}
		if len(msg) != a.DigestLen {
			return nil, exc("ValidationException", "Digest is invalid length for algorithm "+alg+".")
		}
		if a.Scheme == keys.Ed25519ph {
			return digest(crypto.SHA512, msg), nil
		}
		return msg, nil
	}
	if !a.Raw {
		return nil, exc("ValidationException", "MessageType RAW is not valid for signing algorithm "+alg+". Use DIGEST.")
	}
	if a.Hash == 0 {
		return msg, nil
	}
	return digest(a.Hash, msg), nil
}

// digest is the hash h of msg. The SHA-2 hashes of the signing algorithms
// are computed in one call, without a hash.Hash state on the heap.
func digest(h crypto.Hash, msg []byte) []byte {
	switch h {
	case crypto.SHA256:
		d := sha256.Sum256(msg)
		return d[:]
	case crypto.SHA384:
		d := sha512.Sum384(msg)
		return d[:]
	case crypto.SHA512:
		d := sha512.Sum512(msg)
		return d[:]
	}
	s := h.New()
	s.Write(msg)
	return s.Sum(nil)
}
