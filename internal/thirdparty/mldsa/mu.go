package mldsa

import "errors"

// VerifyMu reports whether sig is a valid ML-DSA signature of the message
// representative μ (64 bytes, FIPS 204's μ = SHAKE256(tr ‖ M′)) under the
// public key encoded as pub, of the parameter set named params
// ("ML-DSA-44", "ML-DSA-65" or "ML-DSA-87"). A nil error means valid.
func VerifyMu(params string, pub, μ, sig []byte) error {
	var pk *PublicKey
	var err error
	switch params {
	case "ML-DSA-44":
		pk, err = NewPublicKey44(pub)
	case "ML-DSA-65":
		pk, err = NewPublicKey65(pub)
	case "ML-DSA-87":
		pk, err = NewPublicKey87(pub)
	default:
		return errors.New("mldsa: unknown parameter set " + params)
	}
	if err != nil {
		return err
	}
	return VerifyExternalMu(pk, μ, sig)
}
