package kms

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// Multi-Region keys (spec §9). Related keys share a key id ("mrk-…") and
// are separate catalog records, one per Region (catalog.Name). Every
// related record carries the whole configuration — the primary's Region
// and the replicas' — and the shared properties (spec, usage, origin,
// material versions, rotation); every change to them is written to all
// related records in one storage transaction (catalog.UpdateRelated), so
// no crash leaves two related keys disagreeing.
//
// Creating (ReplicateKey) and Updating (UpdatePrimaryRegion) end after
// WithReplicaDelay. The end is recorded on the records (catalog.Transition)
// in the transaction that starts the state, and completed by a timer, or,
// after a restart, by SweepTransitions; completing is idempotent.

// WithReplicaDelay sets how long a new replica stays Creating and keys
// changing their primary Region stay Updating. 0 (the default) completes
// the change before the call returns, as unit tests want; kmsd serves with
// 2 s.
func WithReplicaDelay(d time.Duration) Option { return func(s *Service) { s.replicaDelay = d } }

// notPrimary is the answer of the operations only a multi-Region primary
// key accepts, when given a replica (spec §1.3 [S]); EnableKeyRotation,
// DisableKeyRotation and RotateKeyOnDemand on a replica give it too [U].
func notPrimary(k *catalog.Key) error {
	return exc("UnsupportedOperationException", k.ARN()+" is not a multi-region primary key.")
}

// notMultiRegion is the answer of ReplicateKey and UpdatePrimaryRegion for
// a single-Region key [U text; spec §9.3 R].
func notMultiRegion(k *catalog.Key) error {
	return exc("UnsupportedOperationException", k.ARN()+" is not a multi-region key.")
}

// notUpdating refuses what AWS refuses while a key's primary Region
// changes (spec §11.2): EnableKey, DisableKey, ScheduleKeyDeletion,
// ReplicateKey, UpdatePrimaryRegion — and GetParametersForImport and
// DeleteImportedKeyMaterial, which should call it too.
func notUpdating(k *catalog.Key) error {
	if k.State == keys.Updating {
		return exc("KMSInvalidStateException", k.ARN()+" is updating.")
	}
	return nil
}

// settled is the state check of ReplicateKey and UpdatePrimaryRegion:
// usable, and not Updating.
func settled(k *catalog.Key) error {
	if err := notUpdating(k); err != nil {
		return err
	}
	return usable(k)
}

// multiRegionConfiguration renders k's MultiRegionConfiguration; nil for a
// single-Region key. ReplicaKeys is present, empty, for a primary without
// replicas [S].
func multiRegionConfiguration(k *catalog.Key) *kmsapi.MultiRegionConfiguration {
	if !k.MultiRegion() {
		return nil
	}
	ref := func(region string) kmsapi.MultiRegionKey {
		return kmsapi.MultiRegionKey{Arn: kmsapi.String(keys.KeyARN(region, k.Account, k.ID)), Region: kmsapi.String(region)}
	}
	kind := "REPLICA"
	if k.IsPrimary() {
		kind = "PRIMARY"
	}
	primary := ref(k.PrimaryRegion)
	cfg := &kmsapi.MultiRegionConfiguration{MultiRegionKeyType: kmsapi.String(kind), PrimaryKey: &primary, ReplicaKeys: []kmsapi.MultiRegionKey{}}
	for _, r := range k.ReplicaRegions {
		cfg.ReplicaKeys = append(cfg.ReplicaKeys, ref(r))
	}
	return cfg
}

// multiRegionKeyType is kms:MultiRegionKeyType of k, "" for a
// single-Region key (the condition key is then absent).
func multiRegionKeyType(k *catalog.Key) string {
	switch {
	case k.IsPrimary():
		return "PRIMARY"
	case k.IsReplica():
		return "REPLICA"
	}
	return ""
}

// updateShared is UpdateKey for the operations that change shared
// properties — rotation settings and material versions: fn runs on the
// key's record, and for a multi-Region primary every replica then gets
// the primary's shared properties in the same transaction. A replica is
// refused (after fn's own checks, so state errors come first, spec §1.4):
// those properties are set on the primary. fn sees the related keys'
// records too (nil for a single-Region key), to change nothing in them.
func (s *Service) updateShared(ctx context.Context, name string, fn func(k *catalog.Key, related []*catalog.Key) error) (*catalog.Key, error) {
	if !strings.HasPrefix(name, "mrk-") { // single-Region (catalog.Name)
		return s.cat.UpdateKey(ctx, name, func(k *catalog.Key) error { return fn(k, nil) })
	}
	ks, err := s.cat.UpdateRelated(ctx, name, func(ks []*catalog.Key, _ *catalog.Batch) error {
		p := ks[0]
		if err := fn(p, ks[1:]); err != nil {
			return err
		}
		if !p.IsPrimary() {
			return notPrimary(p)
		}
		for _, r := range ks[1:] {
			if err := s.copyShared(p, r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ks[0], nil
}

// copyShared gives replica r the shared properties of primary p: the
// rotation setting and history, and for keys whose material KMS made
// (origin AWS_KMS) every version of material r lacks, with the same
// number and KeyMaterialId, sealed under r's own name. Imported material
// is never copied (spec §9.7); an on-demand rotation of it, which waits
// until every related key holds the new material, makes that material
// current in r as in p.
func (s *Service) copyShared(p, r *catalog.Key) error {
	r.RotationEnabled = p.RotationEnabled
	r.RotationPeriodInDays = p.RotationPeriodInDays
	r.NextRotation = p.NextRotation
	r.Rotations = slices.Clone(p.Rotations)
	if p.Origin == originExternal {
		if p.Current > r.Current && r.Version(p.Current) != nil {
			r.Current = p.Current
			settle(r)
		}
		return nil
	}
	if p.Origin != "AWS_KMS" {
		return nil
	}
	for _, v := range p.Versions {
		if r.Version(v.Number) != nil {
			continue
		}
		m, err := s.cat.Material(p, v.Number)
		if err != nil {
			return internal(err)
		}
		sealed, err := s.cat.Seal(r.Name(), v.Number, m)
		clear(m)
		if err != nil {
			return internal(err)
		}
		r.Versions = append(r.Versions, catalog.Version{Number: v.Number, Created: v.Created, Sealed: sealed,
			Public: slices.Clone(v.Public), MaterialID: v.MaterialID})
	}
	r.Current = p.Current
	return nil
}

// related is the records of k's related multi-Region keys that exist, as
// callers see them (expired material gone); nil for a single-Region key.
func (s *Service) related(ctx context.Context, k *catalog.Key) ([]*catalog.Key, error) {
	var out []*catalog.Key
	for _, r := range k.RelatedRegions() {
		x, err := s.cat.Key(ctx, catalog.Name(r, k.ID))
		if errors.Is(err, catalog.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, s.view(x))
	}
	return out, nil
}

// transitionTimers are the timers that complete transitions in this
// process; stop cancels those not run yet (SweepTransitions completes
// them after a restart).
type transitionTimers struct {
	mu     sync.Mutex
	timers map[*time.Timer]struct{}
	armed  map[string]bool // key names with a timer running
	closed bool
}

// arm reports whether name had no timer, and marks it as having one.
func (t *transitionTimers) arm(name string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.armed[name] || t.closed {
		return false
	}
	if t.armed == nil {
		t.armed = map[string]bool{}
	}
	t.armed[name] = true
	return true
}

func (t *transitionTimers) disarm(name string) {
	t.mu.Lock()
	delete(t.armed, name)
	t.mu.Unlock()
}

func (t *transitionTimers) after(d time.Duration, f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	if t.timers == nil {
		t.timers = map[*time.Timer]struct{}{}
	}
	var tm *time.Timer
	tm = time.AfterFunc(d, func() {
		t.mu.Lock()
		delete(t.timers, tm)
		closed := t.closed
		t.mu.Unlock()
		if !closed {
			f()
		}
	})
	t.timers[tm] = struct{}{}
}

func (t *transitionTimers) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for tm := range t.timers {
		tm.Stop()
	}
	t.timers = nil
}

// due is when a transition started now ends.
func (s *Service) due() time.Time { return s.now().UTC().Add(s.replicaDelay) }

// schedule completes the transition of the key named name when it is due:
// at once with no delay, else from a timer.
func (s *Service) schedule(name string) {
	if s.replicaDelay <= 0 {
		if _, _, err := s.completeTransition(context.Background(), name); err != nil {
			s.log.Error("multi-Region key transition", "key", name, "err", err)
		}
		return
	}
	s.arm(name, s.replicaDelay)
}

// arm completes the transition of the key named name from a timer after
// d, unless a timer is running for it already. A timer that fires before
// the service's clock says the transition is due (a test clock) waits
// again; one that fails retries.
func (s *Service) arm(name string, d time.Duration) {
	if !s.timers.arm(name) {
		return
	}
	var run func()
	run = func() {
		_, left, err := s.completeTransition(context.Background(), name)
		if err != nil {
			s.log.Error("multi-Region key transition", "key", name, "err", err)
			left = max(s.replicaDelay, time.Second)
		}
		if left > 0 {
			s.timers.after(left, run)
			return
		}
		s.timers.disarm(name)
	}
	s.timers.after(d, run)
}

// SweepTransitions completes every transition of a multi-Region key that
// is due (a new replica's Creating, an UpdatePrimaryRegion's Updating),
// whoever started it, and sets a timer for those not due yet: kmsd runs
// it at start, so what a killed process left half-way ends on time, and
// then with the other sweepers. It returns how many it completed.
func (s *Service) SweepTransitions(ctx context.Context) (int, error) {
	var pending []string
	err := s.sweepKeys(ctx, func(k *catalog.Key) error {
		if k.Pending != nil {
			pending = append(pending, k.Name())
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, name := range pending {
		done, left, err := s.completeTransition(ctx, name)
		if errors.Is(err, catalog.ErrNotFound) {
			continue
		}
		if err != nil {
			return n, err
		}
		if done {
			n++
		}
		if left > 0 {
			// Started by a process that has stopped since: this one
			// times it.
			s.arm(name, left)
		}
	}
	return n, nil
}

// completeTransition ends the transition of the key named name if it is
// due (done), and otherwise returns how long it has left. A key with none
// (ended already, by a timer, the sweeper or with a related key's) is
// left alone.
func (s *Service) completeTransition(ctx context.Context, name string) (done bool, left time.Duration, err error) {
	_, err = s.cat.UpdateRelated(ctx, name, func(ks []*catalog.Key, _ *catalog.Batch) error {
		t := ks[0].Pending
		if t == nil {
			return catalog.ErrNoChange
		}
		now := s.now().UTC()
		if now.Before(t.Due) {
			left = t.Due.Sub(now)
			return catalog.ErrNoChange
		}
		switch t.Kind {
		case catalog.TransitionReplica:
			k := ks[0]
			k.Pending = nil
			if k.State != keys.Creating {
				return nil // scheduled for deletion meanwhile
			}
			k.State = keys.Enabled
			if k.Origin == "EXTERNAL" {
				k.State = keys.PendingImport // imported material is not copied
			}
		case catalog.TransitionPrimary:
			swapPrimary(ks, t.PrimaryRegion)
			for _, k := range ks {
				if k.Origin == originExternal {
					// Material deleted or expired while Updating: the
					// key lands in PendingImport, not Enabled.
					settle(k)
				}
			}
		default:
			ks[0].Pending = nil
		}
		done = true
		return nil
	})
	return done && err == nil, left, err
}

// swapPrimary makes the key of region the primary in every related
// record, the old primary taking its place among the replicas, and
// returns the keys in Updating to their earlier state.
func swapPrimary(ks []*catalog.Key, region string) {
	old := ks[0].PrimaryRegion
	i := slices.Index(ks[0].ReplicaRegions, region)
	for _, k := range ks {
		if i >= 0 && old != region {
			k.ReplicaRegions = slices.Clone(k.ReplicaRegions)
			if j := slices.Index(k.ReplicaRegions, region); j >= 0 {
				k.ReplicaRegions[j] = old
			}
			k.PrimaryRegion = region
		}
		if k.Pending != nil && k.Pending.Kind == catalog.TransitionPrimary {
			if k.State == keys.Updating {
				k.State = k.Pending.Restore
			}
			k.Pending = nil
		}
	}
}

// deleteKey deletes the key named name at the end of its waiting period.
// A multi-Region key leaves every related key's configuration in the same
// transaction, and a primary in PendingReplicaDeletion whose last replica
// this was starts its own waiting period now (spec §9.6).
func (s *Service) deleteKey(ctx context.Context, name string) error {
	if !strings.HasPrefix(name, "mrk-") {
		return s.cat.DeleteKey(ctx, name)
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	_, err := s.cat.UpdateRelated(ctx, name, func(ks []*catalog.Key, b *catalog.Batch) error {
		d := ks[0]
		b.Delete(d.Name())
		for _, x := range ks[1:] {
			x.ReplicaRegions = slices.DeleteFunc(slices.Clone(x.ReplicaRegions), func(r string) bool { return r == d.Region })
			if x.IsPrimary() && x.State == keys.PendingReplicaDeletion && len(x.ReplicaRegions) == 0 {
				when := now.Add(time.Duration(x.PendingWindowInDays) * day)
				x.State = keys.PendingDeletion
				x.DeletionDate = &when
			}
		}
		return nil
	})
	return err
}
