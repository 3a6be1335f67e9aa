package material

import (
	"crypto/ecdh"
	"errors"
	"io"
)

// NIST EC key pairs are encoded here rather than by x509: for a fresh
// data key pair (GenerateDataKeyPair) x509.MarshalPKCS8PrivateKey and
// MarshalPKIXPublicKey cost more than generating the key — converting
// it to big.Ints and back and marshalling through reflection, some 70
// allocations — while the encodings of one curve differ only in the
// scalar and the point. The bytes are exactly x509's (TestNISTEncoding):
// PKCS #8 version 0, id-ecPublicKey with the named curve, and inside an
// RFC 5915 ECPrivateKey version 1 with the fixed-length scalar and the
// uncompressed point, without the optional curve parameters.

// nistCurve is what encoding a key of one NIST curve needs: the two
// encodings of a key whose scalar and point are zero, and where in them
// the scalar and the point go. A new pair's encodings are copies of these
// with the key's bytes put in: two copies and three small moves instead
// of a DER writer's length arithmetic, so that GenerateDataKeyPair runs
// little code besides the curve's (the handler's own code and data are
// evicted by the key generation, and every line the encoding touches
// must come back from L2).
type nistCurve struct {
	curve      ecdh.Curve
	oid        []byte // DER of the curve's object identifier
	private    []byte // PKCS #8 of the zero key
	public     []byte // SubjectPublicKeyInfo of the zero point
	dAt, qAt   int    // where the scalar and the point start in private
	dLen, qLen int    // the scalar's and the uncompressed point's lengths
	publicQAt  int    // where the point starts in public
}

var nistEncodings = map[string]*nistCurve{
	"ECC_NIST_P256": newNISTCurve(ecdh.P256(), []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}, 32),
	"ECC_NIST_P384": newNISTCurve(ecdh.P384(), []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}, 48),
	"ECC_NIST_P521": newNISTCurve(ecdh.P521(), []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23}, 66),
}

// newNISTCurve makes the templates of a curve whose scalars are dLen
// bytes long (its points 1+2·dLen uncompressed).
func newNISTCurve(curve ecdh.Curve, oid []byte, dLen int) *nistCurve {
	c := &nistCurve{curve: curve, oid: oid, dLen: dLen, qLen: 1 + 2*dLen}
	d, q := make([]byte, c.dLen), make([]byte, c.qLen)
	c.private, c.public = encodeNISTPrivate(oid, d, q), encodeNISTPublic(oid, q)
	// The point ends both encodings; the scalar is where an encoding of
	// an all-ones scalar first differs from the zero one.
	c.qAt, c.publicQAt = len(c.private)-c.qLen, len(c.public)-c.qLen
	for i := range d {
		d[i] = 0xff
	}
	ones := encodeNISTPrivate(oid, d, q)
	for c.dAt < len(ones) && ones[c.dAt] == c.private[c.dAt] {
		c.dAt++
	}
	return c
}

// errKeyLength reports a scalar or point of another length than the
// curve's, which crypto/ecdh never returns.
var errKeyLength = errors.New("material: unexpected EC key length")

// derECPublicKey is the DER of id-ecPublicKey, 1.2.840.10045.2.1.
var derECPublicKey = []byte{0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01}

// generate makes a key pair on the curve: a scalar drawn uniformly from
// [1, n-1] and its point, which is what an ECDSA key is. It returns the
// PKCS #8 private key and the SubjectPublicKeyInfo, in one allocation:
// private is capped, so that neither can write into the other, and
// clearing private leaves public alone.
func (c *nistCurve) generate(rand io.Reader) (private, public []byte, err error) {
	k, err := c.curve.GenerateKey(rand)
	if err != nil {
		return nil, nil, err
	}
	d := k.Bytes()
	defer clear(d)
	q := k.PublicKey().Bytes()
	if len(d) != c.dLen || len(q) != c.qLen {
		return nil, nil, errKeyLength
	}
	b := make([]byte, len(c.private)+len(c.public))
	private, public = b[:len(c.private):len(c.private)], b[len(c.private):]
	copy(private, c.private)
	copy(private[c.dAt:], d)
	copy(private[c.qAt:], q)
	copy(public, c.public)
	copy(public[c.publicQAt:], q)
	return private, public, nil
}

// encodeNISTPrivate is x509.MarshalPKCS8PrivateKey of the key (d, q) on
// the curve oid.
func encodeNISTPrivate(oid, d, q []byte) []byte {
	// PrivateKeyInfo ::= SEQUENCE { version 0, AlgorithmIdentifier,
	//   privateKey OCTET STRING (ECPrivateKey) }
	// ECPrivateKey ::= SEQUENCE { version 1, privateKey OCTET STRING,
	//   publicKey [1] EXPLICIT BIT STRING }
	bitString := tlvLen(1 + len(q)) // the point, after a 0 unused-bits byte
	ecBody := 3 + tlvLen(len(d)) + tlvLen(bitString)
	alg := len(derECPublicKey) + len(oid)
	body := 3 + tlvLen(alg) + tlvLen(tlvLen(ecBody))
	b := make([]byte, 0, tlvLen(body))
	b = appendHeader(b, 0x30, body)
	b = append(b, 0x02, 0x01, 0x00)
	b = appendHeader(b, 0x30, alg)
	b = append(append(b, derECPublicKey...), oid...)
	b = appendHeader(b, 0x04, tlvLen(ecBody))
	b = appendHeader(b, 0x30, ecBody)
	b = append(b, 0x02, 0x01, 0x01)
	b = append(appendHeader(b, 0x04, len(d)), d...)
	b = appendHeader(b, 0xa1, bitString)
	b = append(appendHeader(b, 0x03, 1+len(q)), 0x00)
	return append(b, q...)
}

// encodeNISTPublic is x509.MarshalPKIXPublicKey of the point q on the
// curve oid.
func encodeNISTPublic(oid, q []byte) []byte {
	alg := len(derECPublicKey) + len(oid)
	body := tlvLen(alg) + tlvLen(1+len(q))
	b := make([]byte, 0, tlvLen(body))
	b = appendHeader(b, 0x30, body)
	b = appendHeader(b, 0x30, alg)
	b = append(append(b, derECPublicKey...), oid...)
	b = append(appendHeader(b, 0x03, 1+len(q)), 0x00)
	return append(b, q...)
}

// tlvLen is the length of a DER element whose contents are n bytes long.
func tlvLen(n int) int { return 1 + lenLen(n) + n }

// lenLen is the length of the DER encoding of the length n (< 65536).
func lenLen(n int) int {
	switch {
	case n < 0x80:
		return 1
	case n < 0x100:
		return 2
	}
	return 3
}

// appendHeader appends the tag and the DER length n (< 65536).
func appendHeader(b []byte, tag byte, n int) []byte {
	switch {
	case n < 0x80:
		return append(b, tag, byte(n))
	case n < 0x100:
		return append(b, tag, 0x81, byte(n))
	}
	return append(b, tag, 0x82, byte(n>>8), byte(n))
}
