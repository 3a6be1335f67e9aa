package catalog

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
)

func newBarrier(t *testing.T) *barrier.Barrier {
	t.Helper()
	root := make([]byte, barrier.KeySize)
	rand.Read(root)
	b, err := barrier.New(root)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestImportToken: a token round-trips; tampering, truncation, another
// deployment's root key and a value sealed for another purpose do not open.
func TestImportToken(t *testing.T) {
	c := New(nil, newBarrier(t))
	tok := &ImportToken{Account: "111122223333", Region: "us-east-1", KeyID: "k1", WrappingAlgorithm: "RSAES_OAEP_SHA_256",
		WrappingKeySpec: "RSA_4096", Issued: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Private: bytes.Repeat([]byte{7}, 2400)}
	sealed, err := c.SealImportToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	if len(sealed) > 6144 {
		t.Fatalf("a token with an RSA_4096-sized key is %d bytes, over the model's 6144", len(sealed))
	}
	got, err := c.OpenImportToken(sealed)
	if err != nil || got.KeyID != "k1" || !got.Issued.Equal(tok.Issued) || !bytes.Equal(got.Private, tok.Private) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for i := 0; i < len(sealed); i += 97 {
		bad := bytes.Clone(sealed)
		bad[i] ^= 1
		if _, err := c.OpenImportToken(bad); !errors.Is(err, ErrImportToken) {
			t.Fatalf("byte %d flipped: %v", i, err)
		}
	}
	if _, err := c.OpenImportToken(sealed[:len(sealed)-1]); !errors.Is(err, ErrImportToken) {
		t.Fatal("truncated token opened")
	}
	if _, err := New(nil, newBarrier(t)).OpenImportToken(sealed); !errors.Is(err, ErrImportToken) {
		t.Fatal("token opened under another root key")
	}
	material, err := c.Seal("k1", 1, []byte("material"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.OpenImportToken(material); !errors.Is(err, ErrImportToken) {
		t.Fatal("sealed key material opened as a token")
	}
}

// TestWorkingKey: deterministic, and bound to key id, KeyMaterialId and
// the deployment.
func TestWorkingKey(t *testing.T) {
	c := New(nil, newBarrier(t))
	m := bytes.Repeat([]byte{1}, 32)
	k := c.WorkingKey("k1", "mid", m)
	if len(k) != 32 || !bytes.Equal(k, c.WorkingKey("k1", "mid", m)) {
		t.Fatal("not a deterministic 32-byte key")
	}
	for _, other := range [][]byte{c.WorkingKey("k2", "mid", m), c.WorkingKey("k1", "mie", m), New(nil, newBarrier(t)).WorkingKey("k1", "mid", m), m} {
		if bytes.Equal(k, other) {
			t.Fatal("working key not bound to key id, material id and deployment")
		}
	}
}
