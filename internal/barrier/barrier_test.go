package barrier

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// testKey is 0x00, 0x01, …, 0x1f.
func testKey() []byte {
	k := make([]byte, KeySize)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

func newBarrier(t testing.TB, key []byte, opts ...Option) *Barrier {
	t.Helper()
	b, err := New(key, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return b
}

func TestNew(t *testing.T) {
	tests := []struct {
		name string
		key  []byte
		ok   bool
	}{
		{"32 bytes", make([]byte, 32), true},
		{"nil", nil, false},
		{"AES-128 size", make([]byte, 16), false},
		{"31 bytes", make([]byte, 31), false},
		{"33 bytes", make([]byte, 33), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.key)
			if (err == nil) != tt.ok {
				t.Fatalf("New(%d bytes): err = %v, want ok = %v", len(tt.key), err, tt.ok)
			}
		})
	}
	if _, err := New(testKey(), WithRand(nil)); err == nil {
		t.Fatalf("New with a nil random source succeeded")
	}
}

func TestRoundTrip(t *testing.T) {
	b := newBarrier(t, testKey())
	tests := []struct {
		name      string
		aad       string
		plaintext []byte
	}{
		{"short", "keys/1234abcd/material/1", []byte("secret")},
		{"empty", "keys/x", []byte{}},
		{"nil", "keys/x", nil},
		{"binary", "hsm/cluster-1/kmsuser", []byte{0, 0xff, 0, 0x80}},
		{"unicode aad", "aliases/é/\U0010FFFF", []byte("v")},
		{"large", "big", bytes.Repeat([]byte("0123456789abcdef"), 1<<16)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sealed, err := b.Seal(tt.aad, tt.plaintext)
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			if want := headerSize + len(tt.plaintext) + tagSize; len(sealed) != want {
				t.Fatalf("sealed length %d, want %d", len(sealed), want)
			}
			if len(tt.plaintext) > 4 && bytes.Contains(sealed, tt.plaintext) {
				t.Fatalf("sealed value contains the plaintext")
			}
			got, err := b.Open(tt.aad, sealed)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if got == nil || !bytes.Equal(got, tt.plaintext) {
				t.Fatalf("Open = %q, want %q", got[:min(len(got), 16)], tt.plaintext[:min(len(tt.plaintext), 16)])
			}
		})
	}
}

func TestFreshNonces(t *testing.T) {
	b := newBarrier(t, testKey())
	seen := map[string]bool{}
	for range 100 {
		sealed, err := b.Seal("k", []byte("same plaintext"))
		if err != nil {
			t.Fatalf("Seal: %v", err)
		}
		nonce := string(sealed[1+termSize : headerSize])
		if seen[nonce] {
			t.Fatalf("nonce repeated")
		}
		seen[nonce] = true
	}
}

// TestFormat pins the sealed format: values written by this version must
// open in every later one, so a change here is a compatibility break.
func TestFormat(t *testing.T) {
	nonce := bytes.Repeat([]byte{0xa5}, nonceSize)
	b := newBarrier(t, testKey(), WithRand(bytes.NewReader(nonce)))
	sealed, err := b.Seal("keys/1234", []byte("hello"))
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	// Computed independently with Python's cryptography AESGCM over the
	// additional data 01 00000001 00000009 "keys/1234".
	const want = "01" + "00000001" + "a5a5a5a5a5a5a5a5a5a5a5a5" + // version, term, nonce
		"4922f0cc5d" + "8d5bb1031b6826ce3a3a3ee5f7249a2b" // ciphertext, tag
	if got := hex.EncodeToString(sealed); got != want {
		t.Fatalf("sealed = %s\nwant     %s", got, want)
	}
	if _, err := b.Seal("keys/1234", []byte("x")); err == nil {
		t.Fatalf("Seal succeeded with the random source exhausted")
	}
	pt, err := newBarrier(t, testKey()).Open("keys/1234", sealed)
	if err != nil || string(pt) != "hello" {
		t.Fatalf("Open = %q, %v", pt, err)
	}
}

func TestTamper(t *testing.T) {
	b := newBarrier(t, testKey())
	const aad = "keys/1234/material/1"
	sealed, err := b.Seal(aad, []byte("key material"))
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	wantErrOpen := func(t *testing.T, what string, v []byte) {
		t.Helper()
		if pt, err := b.Open(aad, v); !errors.Is(err, ErrOpen) || pt != nil {
			t.Fatalf("Open %s = %q, %v; want ErrOpen", what, pt, err)
		}
	}
	t.Run("every bit flipped", func(t *testing.T) {
		for i := range len(sealed) * 8 {
			v := bytes.Clone(sealed)
			v[i/8] ^= 1 << (i % 8)
			wantErrOpen(t, "with bit "+strconv.Itoa(i)+" flipped", v)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		for n := range len(sealed) {
			wantErrOpen(t, "truncated to "+strconv.Itoa(n)+" bytes", sealed[:n])
		}
	})
	t.Run("extended", func(t *testing.T) {
		wantErrOpen(t, "with a byte appended", append(bytes.Clone(sealed), 0))
	})
	t.Run("nil", func(t *testing.T) {
		wantErrOpen(t, "nil", nil)
	})
	if _, err := b.Open(aad, sealed); err != nil {
		t.Fatalf("Open of the untouched value: %v", err)
	}
}

func TestMoved(t *testing.T) {
	b := newBarrier(t, testKey())
	const aad = "keys/ab/material"
	sealed, err := b.Seal(aad, []byte("secret"))
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	for _, other := range []string{
		"keys/ab/materiaL", "keys/ab/material/", "keys/a", "eys/ab/material", "keys/ab/material\x00",
		"keys/ac/material", strings.ToUpper(aad),
	} {
		t.Run(other, func(t *testing.T) {
			if _, err := b.Open(other, sealed); !errors.Is(err, ErrOpen) {
				t.Fatalf("Open under aad %q: got %v, want ErrOpen", other, err)
			}
		})
	}
}

func TestWrongKey(t *testing.T) {
	sealed, err := newBarrier(t, testKey()).Seal("k", []byte("secret"))
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	other := testKey()
	other[31] ^= 1
	if _, err := newBarrier(t, other).Open("k", sealed); !errors.Is(err, ErrOpen) {
		t.Fatalf("Open under another key: got %v, want ErrOpen", err)
	}
}

func TestEmptyAAD(t *testing.T) {
	b := newBarrier(t, testKey())
	if _, err := b.Seal("", []byte("x")); err == nil {
		t.Fatalf("Seal with an empty aad succeeded")
	}
	sealed, err := b.Seal("k", []byte("x"))
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	if _, err := b.Open("", sealed); !errors.Is(err, ErrOpen) {
		t.Fatalf("Open with an empty aad: got %v, want ErrOpen", err)
	}
}

func TestRandFailure(t *testing.T) {
	b := newBarrier(t, testKey(), WithRand(errReader{}))
	if _, err := b.Seal("k", []byte("x")); err == nil {
		t.Fatalf("Seal succeeded without randomness")
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("no entropy") }

// TestAdditionalData checks that the authenticated header and aad encode
// without ambiguity: no two different triples give the same bytes.
func TestAdditionalData(t *testing.T) {
	type triple struct {
		version byte
		term    uint32
		aad     string
	}
	triples := []triple{
		{1, 1, "ab"}, {1, 1, "a"}, {1, 1, "abc"}, {1, 1, "ab\x00"},
		{1, 1, "\x00\x00\x00\x02ab"}, {1, 0x100, "ab"}, {1, 2, "ab"}, {2, 1, "ab"},
		{1, 0x01000000, ""}, {1, 1, ""}, {0, 1, "\x01"}, {1, 0, "\x01"},
	}
	seen := map[string]triple{}
	for _, tr := range triples {
		ad := string(additionalData(tr.version, tr.term, tr.aad))
		if prev, ok := seen[ad]; ok {
			t.Fatalf("%+v and %+v encode alike: %x", prev, tr, ad)
		}
		seen[ad] = tr
	}
}

func TestConcurrentUse(t *testing.T) {
	b := newBarrier(t, testKey())
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				aad := strconv.Itoa(g) + "/" + strconv.Itoa(i)
				sealed, err := b.Seal(aad, []byte(aad))
				if err != nil {
					t.Error(err)
					return
				}
				if pt, err := b.Open(aad, sealed); err != nil || string(pt) != aad {
					t.Errorf("Open = %q, %v", pt, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func FuzzOpen(f *testing.F) {
	b, err := New(testKey(), WithRand(bytes.NewReader(bytes.Repeat([]byte{7}, 64*nonceSize))))
	if err != nil {
		f.Fatal(err)
	}
	for _, pt := range []string{"", "x", "key material"} {
		sealed, err := b.Seal("k", []byte(pt))
		if err != nil {
			f.Fatal(err)
		}
		f.Add("k", sealed)
	}
	f.Add("k", []byte{})
	f.Add("", []byte{1, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, aad string, sealed []byte) {
		pt, err := b.Open(aad, sealed)
		if err != nil {
			if !errors.Is(err, ErrOpen) || pt != nil {
				t.Fatalf("Open = %q, %v; want nil, ErrOpen", pt, err)
			}
			return
		}
		// Anything that opens must be exactly what Seal makes of it.
		if aad != "k" || len(sealed) != headerSize+len(pt)+tagSize {
			t.Fatalf("Open accepted %x under %q", sealed, aad)
		}
	})
}

func FuzzRoundTrip(f *testing.F) {
	f.Add("keys/1", []byte("secret"))
	f.Add("é", []byte{})
	f.Fuzz(func(t *testing.T, aad string, pt []byte) {
		b := newBarrier(t, testKey())
		sealed, err := b.Seal(aad, pt)
		if aad == "" {
			if err == nil {
				t.Fatalf("Seal with an empty aad succeeded")
			}
			return
		}
		if err != nil {
			t.Fatalf("Seal: %v", err)
		}
		got, err := b.Open(aad, sealed)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("Open = %q, %v; want %q", got, err, pt)
		}
	})
}
