package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
)

// sweepScanKey marks a context carrying the candidates of one sweep round
// (SweepRound).
type sweepScanKey struct{}

// SweepRound returns ctx carrying the keys any sweeper may act on now —
// keys pending deletion, with automatic rotation, in a multi-Region
// transition, or with imported material that expires, whose earliest due
// instant (catalog.SweepDue) has come — read from the catalog's sweep
// index (catalog.DueKeys), so that the four sweepers run with it
// (SweepDeletions, SweepRotations, SweepTransitions, SweepImports, in that
// order) without reading every key: on a million keys a scan was ~10 s of
// CPU, and the sweepers run every minute. A round reads the index entries
// due and their records only (a store made before the index is indexed
// once, by the first round). Each sweeper still decides on the
// candidate's record and acts through an update that reads the current
// one.
//
// A round also builds the catalog's store index of a store made before it
// (catalog.EnsureStoreIndex; a no-op once built), so that an upgraded
// store is indexed in the background soon after start rather than by the
// first DeleteCustomKeyStore or CreateKey in an external key store.
func (s *Service) SweepRound(ctx context.Context) (context.Context, error) {
	if err := s.cat.EnsureStoreIndex(ctx); err != nil {
		return ctx, err
	}
	var cands []*catalog.Key
	err := s.cat.DueKeys(ctx, s.now(), func(k *catalog.Key) error {
		if sweepCandidate(k) {
			cands = append(cands, k)
		}
		return nil
	})
	if err != nil {
		return ctx, err
	}
	return context.WithValue(ctx, sweepScanKey{}, cands), nil
}

// sweepCandidate says k may be due for some sweeper: a superset of what
// each of them looks for.
func sweepCandidate(k *catalog.Key) bool {
	if k.State == keys.PendingDeletion || k.Pending != nil || (k.RotationEnabled && k.NextRotation != nil) {
		return true
	}
	for i := range k.Versions {
		if k.Versions[i].ValidTo != nil {
			return true
		}
	}
	return false
}

// sweepKeys calls fn for the candidates of ctx's sweep round, or, outside
// one, for every stored key.
func (s *Service) sweepKeys(ctx context.Context, fn func(k *catalog.Key) error) error {
	cands, ok := ctx.Value(sweepScanKey{}).([]*catalog.Key)
	if !ok {
		return s.cat.ScanKeys(ctx, fn)
	}
	for _, k := range cands {
		if err := fn(k); err != nil {
			return err
		}
	}
	return nil
}
