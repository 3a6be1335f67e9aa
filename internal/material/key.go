package material

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"hash"
	"io"
	"sync"

	"filippo.io/mldsa"
	"filippo.io/mldsa/mldsacrypto"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	secpecdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	"github.com/kmsd/kmsd/internal/keys"
	mldsamu "github.com/kmsd/kmsd/internal/thirdparty/mldsa"
)

// Key is the private key of one version of a KMS key's material, decoded
// once to be used many times: RSA keys keep their CRT precomputation,
// EC keys their public point, HMAC keys pools of keyed hash states. A
// Key is safe for concurrent use and never modified after ParseKey.
type Key struct {
	spec string
	priv any    // parse's result; nil for HMAC keys
	mac  []byte // the HMAC key; nil for key pairs

	macMu sync.Mutex
	macs  map[crypto.Hash]*sync.Pool // keyed HMAC states, by hash

	// The crypto/ecdh form of an EC key, made on the first ECDH: the
	// conversion computes the public point again.
	ecdhOnce sync.Once
	ecdhKey  *ecdh.PrivateKey
	ecdhErr  error
}

// ParseKey decodes the private encoding of a key of spec (see the package
// comment). It keeps no reference to private, which the caller may clear.
func ParseKey(spec string, private []byte) (*Key, error) {
	if hmacSizes[spec] != 0 {
		return &Key{spec: spec, mac: append([]byte(nil), private...)}, nil
	}
	k, err := parse(spec, private)
	if err != nil {
		return nil, err
	}
	return &Key{spec: spec, priv: k}, nil
}

// Sign is the package's Sign with k's private key.
func (k *Key) Sign(alg, messageType string, input []byte, rand io.Reader) ([]byte, error) {
	a, ok := keys.Signing(alg)
	if !ok {
		return nil, ErrAlgorithm
	}
	mu := messageType == MessageTypeMu
	if mu && a.Scheme != keys.MLDSA {
		return nil, ErrAlgorithm
	}
	switch p := k.priv.(type) {
	case *rsa.PrivateKey:
		switch a.Scheme {
		case keys.PKCS1v15:
			return rsa.SignPKCS1v15(rand, p, a.Hash, input)
		case keys.PSS:
			return rsa.SignPSS(rand, p, a.Hash, input, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: a.Hash})
		}
	case *ecdsa.PrivateKey:
		if a.Scheme == keys.ECDSA {
			return ecdsa.SignASN1(rand, p, input)
		}
	case ed25519.PrivateKey:
		switch a.Scheme {
		case keys.Ed25519:
			return p.Sign(nil, input, &ed25519.Options{})
		case keys.Ed25519ph:
			return p.Sign(nil, input, &ed25519.Options{Hash: crypto.SHA512})
		}
	case *secp256k1.PrivateKey:
		if a.Scheme == keys.ECDSA {
			return signSecp256k1(p, input, rand)
		}
	case *mldsa.PrivateKey:
		switch {
		case a.Scheme != keys.MLDSA:
		case !mu:
			return p.Sign(nil, input, nil) // pure ML-DSA (FIPS 204 Alg. 2), empty context
		case len(input) != 64:
			return nil, ErrInput
		default:
			return p.Sign(nil, input, mldsacrypto.MLDSAMu)
		}
	case *sm2.PrivateKey:
		if a.Scheme == keys.SM2DSA {
			// input is e = SM3(Z_A ‖ M), signed as it is (no opts).
			return sm2.SignASN1(rand, p, input, nil)
		}
	}
	return nil, ErrAlgorithm
}

// Decrypt is the package's Decrypt with k's private key.
func (k *Key) Decrypt(alg string, ct []byte) ([]byte, error) {
	if k.spec == "SM2" {
		p, ok := k.priv.(*sm2.PrivateKey)
		switch {
		case alg != "SM2PKE":
			return nil, ErrAlgorithm
		case !sm2WellFormed(ct):
			return nil, ErrCiphertext
		case !ok:
			return nil, ErrKey
		}
		pt, err := sm2.Decrypt(p, ct)
		if err != nil {
			return nil, ErrDecrypt
		}
		return pt, nil
	}
	if len(ct) != ModulusLen(k.spec) {
		return nil, ErrCiphertext
	}
	h := keys.EncryptionHash(alg)
	if h == 0 {
		return nil, ErrAlgorithm
	}
	p, ok := k.priv.(*rsa.PrivateKey)
	if !ok {
		return nil, ErrKey
	}
	pt, err := rsa.DecryptOAEP(h.New(), nil, p, ct, nil)
	if err != nil {
		return nil, ErrDecrypt
	}
	return pt, nil
}

// ECDH is the package's ECDH with k's private key.
func (k *Key) ECDH(peer []byte) ([]byte, error) {
	switch p := k.priv.(type) {
	case *sm2.PrivateKey:
		pk, err := smx509.ParsePKIXPublicKey(peer)
		if err != nil {
			return nil, ErrPeerKey
		}
		pub, ok := pk.(*ecdsa.PublicKey)
		if !ok || !sm2.IsSM2PublicKey(pub) {
			return nil, ErrPeerCurve
		}
		ep, err := sm2.PublicKeyToECDH(pub)
		if err != nil {
			return nil, ErrPeerCurve
		}
		ek, err := p.ECDH() // SM2 is rare: converted on every call
		if err != nil {
			return nil, err
		}
		return ek.ECDH(ep)
	case *ecdsa.PrivateKey:
		if nistCurves[k.spec] == nil {
			return nil, ErrSpec
		}
		pk, err := x509.ParsePKIXPublicKey(peer)
		if err != nil {
			return nil, ErrPeerKey
		}
		pub, ok := pk.(*ecdsa.PublicKey)
		if !ok || pub.Curve != p.Curve {
			return nil, ErrPeerCurve
		}
		ep, err := pub.ECDH()
		if err != nil {
			return nil, ErrPeerCurve
		}
		ek, err := k.ecdhPrivate(p.ECDH)
		if err != nil {
			return nil, err
		}
		return ek.ECDH(ep)
	}
	return nil, ErrSpec
}

// ecdhPrivate returns k's crypto/ecdh key, converting it with conv once.
func (k *Key) ecdhPrivate(conv func() (*ecdh.PrivateKey, error)) (*ecdh.PrivateKey, error) {
	k.ecdhOnce.Do(func() { k.ecdhKey, k.ecdhErr = conv() })
	return k.ecdhKey, k.ecdhErr
}

// MAC is the package's MAC with k's HMAC key. The keyed state of each
// hash is made once and reset between calls, not rebuilt from the key.
func (k *Key) MAC(alg string, msg []byte) ([]byte, error) {
	h, ok := keys.MACHash(alg)
	if !ok {
		return nil, ErrAlgorithm
	}
	if k.mac == nil {
		return nil, ErrKey
	}
	pool := k.macPool(h)
	m := pool.Get().(hash.Hash)
	m.Reset()
	m.Write(msg)
	out := m.Sum(nil)
	pool.Put(m)
	return out, nil
}

func (k *Key) macPool(h crypto.Hash) *sync.Pool {
	k.macMu.Lock()
	defer k.macMu.Unlock()
	p := k.macs[h]
	if p == nil {
		p = &sync.Pool{New: func() any { return hmac.New(h.New, k.mac) }}
		if k.macs == nil {
			k.macs = map[crypto.Hash]*sync.Pool{}
		}
		k.macs[h] = p
	}
	return p
}

// zero overwrites what of k's secret can be overwritten in place; k is
// unusable afterwards. Only for a Key no one else holds.
func (k *Key) zero() {
	clear(k.mac)
	if p, ok := k.priv.(*secp256k1.PrivateKey); ok {
		p.Zero()
	}
}

// PublicKey is a decoded public key (DER SubjectPublicKeyInfo) of a key
// of some spec, to verify many signatures with; safe for concurrent use.
type PublicKey struct {
	spec string
	pub  any
}

// ParsePublic decodes the DER SubjectPublicKeyInfo of a key of spec.
func ParsePublic(spec string, public []byte) (*PublicKey, error) {
	if spec == "SM2" {
		p, ok := parseSM2Public(public)
		if !ok {
			return nil, ErrKey
		}
		return &PublicKey{spec: spec, pub: p}, nil
	}
	if spec == "ECC_SECG_P256K1" || oidMLDSA[spec] != nil {
		var info spki
		if rest, err := asn1.Unmarshal(public, &info); err != nil || len(rest) != 0 {
			return nil, ErrKey
		}
		key := info.PublicKey.RightAlign()
		if spec == "ECC_SECG_P256K1" {
			p, err := secp256k1.ParsePubKey(key)
			if err != nil {
				return nil, ErrKey
			}
			return &PublicKey{spec: spec, pub: p}, nil
		}
		p, err := mldsa.NewPublicKey(mldsaParams[spec], key)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrKey, err)
		}
		return &PublicKey{spec: spec, pub: p}, nil
	}
	p, err := x509.ParsePKIXPublicKey(public)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	return &PublicKey{spec: spec, pub: p}, nil
}

// VerifyMu reports whether sig is an ML-DSA signature of the message
// representative μ (MessageType EXTERNAL_MU) under p; ErrAlgorithm for a
// key that is not ML-DSA.
func (p *PublicKey) VerifyMu(mu, sig []byte) (bool, error) {
	pub, ok := p.pub.(*mldsa.PublicKey)
	if !ok {
		return false, ErrAlgorithm
	}
	return mldsamu.VerifyMu(pub.Parameters().String(), pub.Bytes(), mu, sig) == nil, nil
}

// Verify is the package's Verify with public key p.
func (p *PublicKey) Verify(alg string, input, sig []byte) (bool, error) {
	a, ok := keys.Signing(alg)
	if !ok {
		return false, ErrAlgorithm
	}
	switch pub := p.pub.(type) {
	case *secp256k1.PublicKey:
		if a.Scheme != keys.ECDSA {
			return false, ErrKey
		}
		s, err := secpecdsa.ParseDERSignature(sig)
		return err == nil && s.Verify(input, pub), nil
	case *mldsa.PublicKey:
		if a.Scheme != keys.MLDSA {
			return false, ErrAlgorithm
		}
		return mldsa.Verify(pub, input, sig, nil) == nil, nil
	case *rsa.PublicKey:
		switch a.Scheme {
		case keys.PKCS1v15:
			return rsa.VerifyPKCS1v15(pub, a.Hash, input, sig) == nil, nil
		case keys.PSS:
			return rsa.VerifyPSS(pub, a.Hash, input, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: a.Hash}) == nil, nil
		}
	case *ecdsa.PublicKey:
		if p.spec == "SM2" {
			if alg != "SM2DSA" {
				return false, ErrAlgorithm
			}
			return sm2.VerifyASN1(pub, input, sig), nil
		}
		if a.Scheme == keys.ECDSA {
			return ecdsa.VerifyASN1(pub, input, sig), nil
		}
	case ed25519.PublicKey:
		switch a.Scheme {
		case keys.Ed25519:
			return ed25519.VerifyWithOptions(pub, input, sig, &ed25519.Options{}) == nil, nil
		case keys.Ed25519ph:
			return ed25519.VerifyWithOptions(pub, input, sig, &ed25519.Options{Hash: crypto.SHA512}) == nil, nil
		}
	}
	return false, ErrAlgorithm
}
