package material

import (
	"encoding/asn1"
	"io"
	"math/big"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
)

// signSecp256k1 is ECDSA (FIPS 186-4 §6.4) on secp256k1 with a random
// nonce and s left as computed, not normalised to the low half: what AWS
// KMS is observed to do (spec §5.1), unlike the deterministic, low-S
// signatures of Bitcoin-style libraries. Both kinds verify anywhere.
func signSecp256k1(k *secp256k1.PrivateKey, hash []byte, rand io.Reader) ([]byte, error) {
	var e secp256k1.ModNScalar
	e.SetByteSlice(hash) // bits2int: the leftmost 256 bits, reduced mod n
	var buf [32]byte
	defer clear(buf[:])
	for {
		if _, err := io.ReadFull(rand, buf[:]); err != nil {
			return nil, err
		}
		var nonce secp256k1.ModNScalar
		if nonce.SetBytes(&buf) != 0 || nonce.IsZero() {
			continue
		}
		var p secp256k1.JacobianPoint
		secp256k1.ScalarBaseMultNonConst(&nonce, &p)
		p.ToAffine()
		var r secp256k1.ModNScalar
		r.SetBytes(p.X.Bytes()) // x mod n
		if r.IsZero() {
			continue
		}
		// s = k⁻¹ (e + r·d) mod n
		var s secp256k1.ModNScalar
		s.Mul2(&r, &k.Key).Add(&e).Mul(new(secp256k1.ModNScalar).InverseValNonConst(&nonce))
		nonce.Zero()
		if s.IsZero() {
			continue
		}
		rb, sb := r.Bytes(), s.Bytes()
		return asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(rb[:]), new(big.Int).SetBytes(sb[:])})
	}
}
