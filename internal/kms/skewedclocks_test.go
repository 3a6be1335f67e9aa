package kms

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/dbclock"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/storage"
)

// skewedNode is one kmsd node of a test on st, its handle of a database
// other nodes share, whose own clock runs skew off the database's (the
// machine's). Its Service takes time as kmsd gives it: the database's
// clock as the node estimates it (package dbclock), moved by *advance,
// which moves every node's time together as --fault-clock-offset does, so
// that a test reaches dates days away.
func skewedNode(t *testing.T, st storage.Store, b *barrier.Barrier, skew time.Duration, advance *atomic.Int64) *fixture {
	t.Helper()
	clk := dbclock.New(t.Context(), func() time.Time { return time.Now().Add(skew) }, st.(storage.Clock))
	cat := catalog.New(st, b)
	if err := cat.InitSweepIndex(t.Context()); err != nil {
		t.Fatal(err)
	}
	svc := New(cat, WithClock(func() time.Time { return clk.Now().Add(time.Duration(advance.Load())) }))
	t.Cleanup(svc.Close)
	return &fixture{svc: svc, cat: cat, barrier: b, db: st,
		caller: &Caller{Account: "111122223333", Region: "us-east-1", ARN: "arn:aws:iam::111122223333:root"}}
}

// nearTime fails t unless got is within a second of want.
func nearTime(t *testing.T, what string, got, want time.Time) {
	t.Helper()
	if d := got.Sub(want); d < -time.Second || d > time.Second {
		t.Errorf("%s = %v, want %v: off by %v", what, got, want, d)
	}
}

// sweepDeletions runs one sweep round of deletions on f's node, as the
// controller does.
func (f *fixture) sweepDeletions(t *testing.T) {
	t.Helper()
	ctx, err := f.svc.SweepRound(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.SweepDeletions(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestSkewedClocks (issue #16): the times of a key's life that one node
// writes and another compares with "now" — the deletion date, imported
// material's ValidTo, an import token's 24 hours — are on the database's
// clock, so two nodes whose clocks are 3 minutes behind and 3 minutes
// ahead of it agree on them. On the nodes' own clocks, as before, they
// were 6 minutes apart: a deletion ran minutes late, material expired at
// once on the node ahead and late on the node behind, a token lived 6
// minutes more or less than its 24 hours.
func TestSkewedClocks(t *testing.T) {
	const skew = 3 * time.Minute
	for _, drv := range sharedDrivers {
		t.Run(drv.name, func(t *testing.T) {
			sa, sb := drv.open(t)
			b := newBarrier(t)
			var advance atomic.Int64
			behind := skewedNode(t, sa, b, -skew, &advance)
			ahead := skewedNode(t, sb, b, skew, &advance)
			at := func(d time.Duration) { advance.Store(int64(d)) }
			ctx := t.Context()

			t.Run("DeletionDate", func(t *testing.T) {
				at(0)
				out, err := behind.svc.CreateKey(ctx, behind.caller, &kmsapi.CreateKeyRequest{})
				if err != nil {
					t.Fatal(err)
				}
				id := *out.KeyMetadata.KeyId
				sched, err := ahead.svc.ScheduleKeyDeletion(ctx, ahead.caller, &kmsapi.ScheduleKeyDeletionRequest{
					KeyId: &id, PendingWindowInDays: kmsapi.Int32(7)})
				if err != nil {
					t.Fatal(err)
				}
				week := 7 * 24 * time.Hour
				nearTime(t, "DeletionDate scheduled through the node ahead", sched.DeletionDate.Time, time.Now().Add(week))
				// The sweep on the node behind: not a minute before the
				// date on the database's clock, but a minute after it.
				exists := func() bool {
					_, err := New(catalog.New(sa, b)).DescribeKey(ctx, behind.caller, &kmsapi.DescribeKeyRequest{KeyId: &id})
					return err == nil
				}
				at(week - time.Minute)
				behind.sweepDeletions(t)
				if !exists() {
					t.Fatal("the node behind deleted the key a minute before its deletion date")
				}
				at(week + time.Minute)
				behind.sweepDeletions(t)
				if exists() {
					t.Fatal("the node behind had not deleted the key a minute after its deletion date")
				}
			})

			t.Run("MaterialValidTo", func(t *testing.T) {
				at(0)
				// Made and imported through the node ahead: the node behind
				// (no change feed here) reads it first once it is imported.
				id := ahead.createExternal(t, "SYMMETRIC_DEFAULT", "")
				// Two minutes ahead of the database: in the future for
				// every node, though past for the node ahead's own clock.
				validTo := time.Now().Add(2 * time.Minute).Truncate(time.Second)
				if _, err := ahead.doImport(t, id, random(32), importOpts{validTo: &validTo}); err != nil {
					t.Fatalf("ImportKeyMaterial through the node ahead, ValidTo two minutes ahead of the database: %v", err)
				}
				for _, n := range []struct {
					name string
					f    *fixture
				}{{"behind", behind}, {"ahead", ahead}} {
					if _, err := n.f.svc.Encrypt(ctx, n.f.caller, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("x")}); err != nil {
						t.Fatalf("Encrypt on the node %s, material valid two more minutes: %v", n.name, err)
					}
				}
				at(2*time.Minute + 30*time.Second)
				_, err := behind.svc.Encrypt(ctx, behind.caller, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("x")})
				wantException(t, err, "KMSInvalidStateException") // expired half a minute ago
			})

			t.Run("ImportToken", func(t *testing.T) {
				at(0)
				const alg, spec = "RSA_AES_KEY_WRAP_SHA_256", "RSA_2048"
				id := behind.createExternal(t, "SYMMETRIC_DEFAULT", "")
				importWith := func(f *fixture, p *kmsapi.GetParametersForImportResponse) error {
					_, err := f.svc.ImportKeyMaterial(ctx, f.caller, &kmsapi.ImportKeyMaterialRequest{KeyId: &id,
						ImportToken: p.ImportToken, EncryptedKeyMaterial: wrapMaterial(t, p.PublicKey, alg, random(32)),
						ExpirationModel: kmsapi.String("KEY_MATERIAL_DOES_NOT_EXPIRE")})
					return err
				}
				// Made on the node behind, used on the node ahead two
				// minutes before its 24 hours are up.
				p := behind.params(t, id, alg, spec)
				nearTime(t, "ParametersValidTo from the node behind", p.ParametersValidTo.Time, time.Now().Add(importTokenLifetime))
				at(importTokenLifetime - 2*time.Minute)
				if err := importWith(ahead, p); err != nil {
					t.Fatalf("a token made on the node behind, used on the node ahead before its 24 hours are up: %v", err)
				}
				// Made on the node ahead, used on the node behind a minute
				// after its 24 hours.
				at(0)
				p = ahead.params(t, id, alg, spec)
				at(importTokenLifetime + time.Minute)
				wantException(t, importWith(behind, p), "ExpiredImportTokenException")
			})
		})
	}
}
