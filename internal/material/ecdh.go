package material

import (
	"errors"
)

// Errors of ECDH about the peer's public key.
var (
	ErrPeerKey   = errors.New("material: peer public key is not DER SubjectPublicKeyInfo")
	ErrPeerCurve = errors.New("material: peer public key is not a point of the key's curve")
)

// ECDH derives the shared secret of the private key of a NIST curve or SM2
// spec and a peer's public key (DER SubjectPublicKeyInfo): the raw
// x-coordinate Z of d·Q, fixed length, no KDF (spec §5.6).
func ECDH(spec string, private, peer []byte) ([]byte, error) {
	if spec != "SM2" && nistCurves[spec] == nil {
		return nil, ErrSpec
	}
	k, err := ParseKey(spec, private)
	if err != nil {
		return nil, err
	}
	return k.ECDH(peer)
}
