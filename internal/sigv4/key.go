package sigv4

import (
	"crypto/sha256"
	"strings"
	"sync"
)

// HMAC-SHA256 is written out here rather than taken from crypto/hmac so that
// the hot path allocates nothing: crypto/hmac allocates two hash states per
// key. HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)), K padded to the
// 64-byte block.

const blockSize = 64

// hmacStart appends the inner block (key ^ ipad) to b; the caller appends
// the message and calls hmacSum. key must be at most blockSize bytes.
func hmacStart(b, key []byte) []byte {
	for i := range blockSize {
		var k byte
		if i < len(key) {
			k = key[i]
		}
		b = append(b, k^0x36)
	}
	return b
}

// hmacSum finishes an HMAC whose inner input, built by hmacStart and the
// message appended to it, is in.
func hmacSum(key, in []byte) [32]byte {
	inner := sha256.Sum256(in)
	var outer [blockSize + sha256.Size]byte
	for i := range blockSize {
		var k byte
		if i < len(key) {
			k = key[i]
		}
		outer[i] = k ^ 0x5c
	}
	copy(outer[blockSize:], inner[:])
	return sha256.Sum256(outer[:])
}

// hmacString returns HMAC-SHA256(key, msg) for a short msg.
func hmacString(key []byte, msg string) [32]byte {
	var buf [blockSize + 64]byte
	in := hmacStart(buf[:0], key)
	return hmacSum(key, append(in, msg...))
}

// deriveKey returns the SigV4 signing key
// HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service), "aws4_request").
func deriveKey(secret, date, region, service string) [32]byte {
	var buf [4 + 60]byte
	k := append(buf[:0], "AWS4"...)
	k = append(k, secret...)
	if len(k) > blockSize {
		// HMAC hashes keys longer than a block (XKS secrets may be 64
		// characters, 68 with "AWS4").
		sum := sha256.Sum256(k)
		k = sum[:]
	}
	h := hmacString(k, date)
	h = hmacString(h[:], region)
	h = hmacString(h[:], service)
	return hmacString(h[:], terminator)
}

// maxCachedKeys bounds the signing-key cache. One entry serves one access
// key for one region and service for a day, so this is ample; past it a
// random entry is dropped.
const maxCachedKeys = 1024

// keyCache holds derived signing keys, saving four HMACs per request. It is
// keyed by the secret itself, not the access key id, so a rotated secret
// never meets a stale key. Only keys that verified a signature are stored,
// so requests with made-up regions cannot churn it.
type keyCache struct {
	mu sync.Mutex
	m  map[cacheKey][32]byte
}

type cacheKey struct{ secret, date, region, service string }

func (c *keyCache) get(secret, date, region, service string) ([32]byte, bool) {
	c.mu.Lock()
	k, ok := c.m[cacheKey{secret, date, region, service}]
	c.mu.Unlock()
	return k, ok
}

func (c *keyCache) put(secret, date, region, service string, key [32]byte) {
	// The scope strings point into the request's Authorization header;
	// clone them so the cache does not keep whole headers alive.
	ck := cacheKey{secret, strings.Clone(date), strings.Clone(region), strings.Clone(service)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[cacheKey][32]byte)
	}
	if len(c.m) >= maxCachedKeys {
		for old := range c.m { // map order is random: evict one at random
			delete(c.m, old)
			break
		}
	}
	c.m[ck] = key
}
