package controller

import (
	"context"

	"github.com/kmsd/kmsd/internal/storage"
)

type leaseKey struct{}

// WithLease returns ctx carrying l: writes made with it through a store
// wrapped by Fence are fenced by l.
func WithLease(ctx context.Context, l storage.Lease) context.Context {
	return context.WithValue(ctx, leaseKey{}, l)
}

// LeaseFrom returns the lease ctx carries, if any.
func LeaseFrom(ctx context.Context) (storage.Lease, bool) {
	l, ok := ctx.Value(leaseKey{}).(storage.Lease)
	return l, ok
}

// Fence wraps st so that every write made with a context carrying a lease
// (WithLease) runs as UpdateFenced by that lease, and fails wrapping
// storage.ErrFenced once the lease is no longer held at its epoch. Writes
// with other contexts (API requests) pass through unchanged. A store that
// is not a storage.Leaser is returned as it is.
//
// The wrapper is only a storage.Store: hand it to the code whose writes
// must be fenced (the catalog), and keep st for optional interfaces. The
// Tx its Update hands fn is the driver's own, inside the fenced
// transaction, so its optional capabilities (storage.BatchCreator,
// BatchGetter, BatchPutter) are fenced with everything else fn writes.
func Fence(st storage.Store) storage.Store {
	ls, ok := st.(storage.Leaser)
	if !ok {
		return st
	}
	return fenced{st, ls}
}

type fenced struct {
	storage.Store
	ls storage.Leaser
}

func (f fenced) Update(ctx context.Context, fn func(tx storage.Tx) error) error {
	if l, ok := LeaseFrom(ctx); ok {
		return f.ls.UpdateFenced(ctx, l, fn)
	}
	return f.Store.Update(ctx, fn)
}

func (f fenced) Put(ctx context.Context, key string, value []byte) error {
	if _, ok := LeaseFrom(ctx); ok {
		return f.Update(ctx, func(tx storage.Tx) error { return tx.Put(ctx, key, value) })
	}
	return f.Store.Put(ctx, key, value)
}

func (f fenced) Create(ctx context.Context, key string, value []byte) error {
	if _, ok := LeaseFrom(ctx); ok {
		return f.Update(ctx, func(tx storage.Tx) error { return tx.Create(ctx, key, value) })
	}
	return f.Store.Create(ctx, key, value)
}

func (f fenced) Delete(ctx context.Context, key string) error {
	if _, ok := LeaseFrom(ctx); ok {
		return f.Update(ctx, func(tx storage.Tx) error { return tx.Delete(ctx, key) })
	}
	return f.Store.Delete(ctx, key)
}
