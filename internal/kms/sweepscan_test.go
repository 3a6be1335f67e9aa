package kms

import (
	"context"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestSweepRound: the sweepers run on one round's scan act on what it
// found (a deletion, a rotation) as they do on their own scans, the round
// keeps only candidates, and a key made due after the scan waits for the
// next round.
func TestSweepRound(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	const day = 24 * time.Hour
	plain, doomed, rotating, late := f.createKey(t), f.createKey(t), f.createKey(t), f.createKey(t)
	if _, err := f.svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: &doomed, PendingWindowInDays: kmsapi.Int32(7)}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.EnableKeyRotation(ctx, f.caller, &kmsapi.EnableKeyRotationRequest{KeyId: &rotating, RotationPeriodInDays: kmsapi.Int32(90)}); err != nil {
		t.Fatal(err)
	}
	f.clock.advance(91 * day)
	round, err := f.svc.SweepRound(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var cands []string
	if err := f.svc.sweepKeys(round, func(k *catalog.Key) error { cands = append(cands, k.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(cands) != 2 || !(cands[0] == doomed && cands[1] == rotating || cands[0] == rotating && cands[1] == doomed) {
		t.Errorf("round's candidates %v, want %s and %s (not %s)", cands, doomed, rotating, plain)
	}
	// Scheduled after the scan: not this round's.
	if _, err := f.svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: &late, PendingWindowInDays: kmsapi.Int32(7)}); err != nil {
		t.Fatal(err)
	}
	f.clock.advance(8 * day)
	if n, err := f.svc.SweepDeletions(round); err != nil || n != 1 {
		t.Fatalf("SweepDeletions in the round = %d, %v", n, err)
	}
	if _, err := f.cat.Key(ctx, doomed); err == nil {
		t.Error("the due key was not deleted")
	}
	if n, err := f.svc.SweepRotations(round); err != nil || n != 1 {
		t.Fatalf("SweepRotations in the round = %d, %v", n, err)
	}
	if k, err := f.cat.Key(ctx, rotating); err != nil || k.Current != 2 {
		t.Fatalf("rotated key: current %v, %v", k, err)
	}
	if _, err := f.svc.SweepTransitions(round); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.SweepImports(round); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cat.Key(ctx, late); err != nil {
		t.Fatalf("a key scheduled after the round's scan was deleted by it: %v", err)
	}
	next, err := f.svc.SweepRound(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := f.svc.SweepDeletions(next); err != nil || n != 1 {
		t.Fatalf("SweepDeletions in the next round = %d, %v", n, err)
	}
}
