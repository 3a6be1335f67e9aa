package catalog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/keys"
)

// createSealed stores an enabled key id whose version 1 seals secret.
func createSealed(t *testing.T, c *Catalog, id string, secret []byte) *Key {
	t.Helper()
	sealed, err := c.Seal(id, 1, secret)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	k := &Key{ID: id, Account: testAccount, Policy: testPolicy, Region: "us-east-1", Created: now, KeyUsage: keys.SignVerify,
		KeySpec: "ECC_NIST_P256", Origin: "AWS_KMS", State: keys.Enabled, Current: 1,
		Versions: []Version{{Number: 1, Created: now, Sealed: sealed, Public: []byte("spki of " + id)}}}
	if err := c.CreateKey(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	return k
}

// counter is a parse function that copies its input and counts its calls.
type counter struct{ n atomic.Int32 }

func (p *counter) parse(b []byte) (any, error) {
	p.n.Add(1)
	return string(b), nil
}

func (c *Catalog) parsedLen() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.parsed)
}

// TestParsed checks a record's material is opened and decoded once, the
// private and public kinds apart, and that the opened bytes are cleared.
func TestParsed(t *testing.T) {
	c := newCatalog(t)
	k := createSealed(t, c, "k1", []byte("secret one"))
	var p counter
	for i := 0; i < 3; i++ {
		v, err := c.Parsed(k, 1, Private, p.parse)
		if err != nil || v != "secret one" {
			t.Fatalf("Parsed(Private) = %v, %v", v, err)
		}
		v, err = c.Parsed(k, 1, Public, p.parse)
		if err != nil || v != "spki of k1" {
			t.Fatalf("Parsed(Public) = %v, %v", v, err)
		}
	}
	if n := p.n.Load(); n != 2 {
		t.Fatalf("parse called %d times, want 2", n)
	}
	var opened []byte
	k2 := createSealed(t, c, "k2", []byte("secret two"))
	if _, err := c.Parsed(k2, 1, Private, func(b []byte) (any, error) { opened = b; return 1, nil }); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(opened, make([]byte, len(opened))) {
		t.Fatalf("opened material not cleared: %q", opened)
	}
	if _, err := c.Parsed(k, 2, Private, p.parse); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Parsed of a missing version: %v, want ErrNotFound", err)
	}
	perr := errors.New("bad")
	if _, err := c.Parsed(k2, 1, Public, func([]byte) (any, error) { return nil, perr }); !errors.Is(err, perr) {
		t.Fatalf("Parsed with a failing parse: %v", err)
	}
}

// TestParsedReplaced checks an entry lives exactly as long as its record:
// an update or a deletion drops it, and a stale record is never cached.
func TestParsedReplaced(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		change func(c *Catalog) error
	}{
		{"disable", func(c *Catalog) error {
			_, err := c.UpdateKey(ctx, "k1", func(k *Key) error { k.State = keys.Disabled; return nil })
			return err
		}},
		{"describe", func(c *Catalog) error {
			_, err := c.UpdateKey(ctx, "k1", func(k *Key) error { k.Description = "new"; return nil })
			return err
		}},
		{"delete", func(c *Catalog) error { return c.DeleteKey(ctx, "k1") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCatalog(t)
			k := createSealed(t, c, "k1", []byte("secret"))
			var p counter
			for _, kind := range []bool{Private, Public} {
				if _, err := c.Parsed(k, 1, kind, p.parse); err != nil {
					t.Fatal(err)
				}
			}
			if n := c.parsedLen(); n != 2 {
				t.Fatalf("%d entries, want 2", n)
			}
			if err := tc.change(c); err != nil {
				t.Fatal(err)
			}
			if n := c.parsedLen(); n != 0 {
				t.Fatalf("%d entries survive the change of their record, want 0", n)
			}
			// The old record still decodes, for a call already past its
			// checks, but is not kept.
			if _, err := c.Parsed(k, 1, Private, p.parse); err != nil {
				t.Fatal(err)
			}
			if n := c.parsedLen(); n != 0 {
				t.Fatalf("a stale record was cached: %d entries", n)
			}
		})
	}
}

// TestParsedLimit checks the cache never holds more than its limit.
func TestParsedLimit(t *testing.T) {
	c := newCatalog(t)
	c.SetParsedLimit(3)
	var p counter
	for i := 0; i < 10; i++ {
		k := createSealed(t, c, fmt.Sprintf("k%d", i), []byte("secret"))
		if _, err := c.Parsed(k, 1, Private, p.parse); err != nil {
			t.Fatal(err)
		}
		if n := c.parsedLen(); n > 3 {
			t.Fatalf("%d entries after %d keys, limit 3", n, i+1)
		}
	}
	c.SetParsedLimit(1)
	if n := c.parsedLen(); n > 1 {
		t.Fatalf("%d entries after lowering the limit to 1", n)
	}
	c.SetParsedLimit(0)
	k, _ := c.Key(context.Background(), "k0")
	if _, err := c.Parsed(k, 1, Private, p.parse); err != nil || c.parsedLen() != 0 {
		t.Fatalf("limit 0 keeps %d entries (%v)", c.parsedLen(), err)
	}
}

// TestParsedConcurrent decodes while records are replaced (run with
// -race): every caller gets its own record's value, and what is left
// cached belongs to the current record.
func TestParsedConcurrent(t *testing.T) {
	ctx := context.Background()
	c := newCatalog(t)
	createSealed(t, c, "k1", []byte("secret"))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				k, err := c.Key(ctx, "k1")
				if err != nil {
					t.Error(err)
					return
				}
				// The value names the record it was decoded from.
				v, err := c.Parsed(k, 1, Public, func([]byte) (any, error) { return k.Description, nil })
				if err != nil || v != k.Description {
					t.Errorf("Parsed = %v, %v; want %q", v, err, k.Description)
					return
				}
			}
		}()
	}
	for i := 0; i < 200; i++ {
		if _, err := c.UpdateKey(ctx, "k1", func(k *Key) error { k.Description = fmt.Sprint(i); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	cur, _ := c.Key(ctx, "k1")
	c.mu.RLock()
	defer c.mu.RUnlock()
	for pk, e := range c.parsed {
		if e.rec != cur {
			t.Errorf("entry %+v is for a replaced record", pk)
		}
	}
}
