package keystore

import (
	"context"
	"errors"
	"testing"
	"time"
)

type countingBacking struct{ connects int }

func (c *countingBacking) Connect(ctx context.Context, st *Store, secret, next []byte) (bool, error) {
	c.connects++
	return next != nil, nil
}
func (c *countingBacking) Disconnect(ctx context.Context, st *Store) error { return nil }

// TestFaults: an injected fault is checked, used by the next real connect
// of its store only (not by the probe of an unrecorded rotation, nor by
// another store), once.
func TestFaults(t *testing.T) {
	ctx := context.Background()
	var fs Faults
	inner := &countingBacking{}
	b := fs.Wrap(inner)
	for _, f := range []Fault{{Code: "NOPE"}, {}, {Latency: -time.Second}} {
		if err := fs.Inject("cks-1", f); !errors.Is(err, ErrInvalidFault) {
			t.Fatalf("Inject(%+v) = %v", f, err)
		}
	}
	if err := fs.Inject("cks-1", Fault{Code: "SUBNET_NOT_FOUND", Latency: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	a, other := &Store{ID: "cks-1"}, &Store{ID: "cks-2"}
	if _, err := b.Connect(ctx, other, []byte("pw"), []byte("next")); err != nil {
		t.Fatalf("another store: %v", err)
	}
	if _, err := b.Connect(ctx, a, []byte("pending"), nil); err != nil {
		t.Fatalf("rotation probe: %v", err)
	}
	began := time.Now()
	_, err := b.Connect(ctx, a, []byte("pw"), []byte("next"))
	if code(err) != "SUBNET_NOT_FOUND" || time.Since(began) < 20*time.Millisecond {
		t.Fatalf("faulty connect: %v after %v", err, time.Since(began))
	}
	if inner.connects != 2 {
		t.Fatalf("the faulty connect reached the backing: %d connects", inner.connects)
	}
	if rotated, err := b.Connect(ctx, a, []byte("pw"), []byte("next")); err != nil || !rotated || inner.connects != 3 {
		t.Fatalf("the fault was used twice: %v %v", rotated, err)
	}
	// An external store's connect proper has no next password (it never
	// rotates one): the fault is still for it.
	ext := &Store{ID: "cks-3", Type: TypeExternal}
	fs.Inject(ext.ID, Fault{Code: "INTERNAL_ERROR"})
	if _, err := b.Connect(ctx, ext, []byte("secret"), nil); code(err) != "INTERNAL_ERROR" || inner.connects != 3 {
		t.Fatalf("external store's faulty connect: %v, %d connects", err, inner.connects)
	}
	if _, ok := b.(Checker); !ok {
		t.Fatal("a wrapped backing is no Checker")
	}
	// Latency ends with the connector's context.
	fs.Inject("cks-1", Fault{Latency: time.Hour})
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := b.Connect(cctx, a, []byte("pw"), []byte("next")); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled latency: %v", err)
	}
}
