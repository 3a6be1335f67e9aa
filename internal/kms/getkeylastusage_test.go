package kms

import (
	"context"
	"crypto/rand"
	"errors"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// usageFixture is a fixture whose calls go through the same seam as the
// server's: a fresh Caller per call with its own request id, and
// RecordUse with the call's event id once the operation returned without
// error.
type usageFixture struct {
	*fixture
	n int
}

func newUsageFixture(t *testing.T) *usageFixture {
	t.Helper()
	f := &usageFixture{fixture: newFixture(t)}
	if err := f.svc.StartUsageTracking(context.Background()); err != nil {
		t.Fatal(err)
	}
	return f
}

// call runs fn as one request of op and returns its request and event
// ids, as the server would record them.
func (f *usageFixture) call(op string, fn func(c *Caller) error) (reqID, eventID string, err error) {
	f.n++
	reqID, eventID = "req-"+strconv.Itoa(f.n), "event-"+strconv.Itoa(f.n)
	c := *f.caller
	c.RequestID, c.Resources = reqID, nil
	if err = fn(&c); err == nil {
		f.svc.RecordUse(&c, op, f.clock.now(), eventID)
	}
	return reqID, eventID, err
}

func (f *usageFixture) lastUsage(t *testing.T, keyID string) *kmsapi.GetKeyLastUsageResponse {
	t.Helper()
	out, err := f.svc.GetKeyLastUsage(context.Background(), f.caller, &kmsapi.GetKeyLastUsageRequest{KeyId: &keyID})
	if err != nil {
		t.Fatalf("GetKeyLastUsage(%s): %v", keyID, err)
	}
	return out
}

// wantUse checks the last use out reports.
func wantUse(t *testing.T, out *kmsapi.GetKeyLastUsageResponse, op, reqID, eventID string, at time.Time) {
	t.Helper()
	u := out.KeyLastUsage
	if u == nil || u.Operation == nil || u.Timestamp == nil || u.KmsRequestId == nil || u.CloudTrailEventId == nil {
		t.Fatalf("KeyLastUsage = %+v, want a use by %s", u, op)
	}
	if *u.Operation != op || *u.KmsRequestId != reqID || *u.CloudTrailEventId != eventID || !u.Timestamp.Equal(at) {
		t.Fatalf("KeyLastUsage = {%s %v %s %s}, want {%s %v %s %s}", *u.Operation, u.Timestamp.Time, *u.CloudTrailEventId, *u.KmsRequestId,
			op, at, eventID, reqID)
	}
}

func TestGetKeyLastUsageNewKey(t *testing.T) {
	f := newUsageFixture(t)
	f.clock.advance(time.Hour) // the key is created after tracking began
	id := f.createKey(t)
	out := f.lastUsage(t, id)
	md, _ := f.svc.DescribeKey(context.Background(), f.caller, &kmsapi.DescribeKeyRequest{KeyId: &id})
	if *out.KeyId != *md.KeyMetadata.Arn {
		t.Errorf("KeyId = %s, want the key ARN %s", *out.KeyId, *md.KeyMetadata.Arn)
	}
	if out.KeyLastUsage == nil || *out.KeyLastUsage != (kmsapi.KeyLastUsageData{}) {
		t.Errorf("KeyLastUsage = %+v, want empty ({})", out.KeyLastUsage)
	}
	if !out.KeyCreationDate.Equal(md.KeyMetadata.CreationDate.Time) || !out.TrackingStartDate.Equal(out.KeyCreationDate.Time) {
		t.Errorf("KeyCreationDate %v, TrackingStartDate %v; want both the CreationDate %v",
			out.KeyCreationDate.Time, out.TrackingStartDate.Time, md.KeyMetadata.CreationDate.Time)
	}
}

// TestGetKeyLastUsageOlderKey: a key that existed before tracking began
// (before the upgraded kmsd first started) is tracked from that start,
// which is stored once.
func TestGetKeyLastUsageOlderKey(t *testing.T) {
	f := newFixture(t) // a kmsd before GetKeyLastUsage: it never stores a start
	id := f.createKey(t)
	created := f.clock.now()
	f.clock.advance(48 * time.Hour)
	began := f.clock.now()
	upgraded := New(f.cat, WithClock(f.clock.now))
	t.Cleanup(upgraded.Close)
	if err := upgraded.StartUsageTracking(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.clock.advance(time.Hour)
	// A restart keeps the first start.
	svc2 := New(f.cat, WithClock(f.clock.now))
	t.Cleanup(svc2.Close)
	if err := svc2.StartUsageTracking(context.Background()); err != nil {
		t.Fatal(err)
	}
	out, err := svc2.GetKeyLastUsage(context.Background(), f.caller, &kmsapi.GetKeyLastUsageRequest{KeyId: &id})
	if err != nil {
		t.Fatal(err)
	}
	if !out.TrackingStartDate.Equal(began) || !out.KeyCreationDate.Equal(created) {
		t.Errorf("TrackingStartDate %v, KeyCreationDate %v; want %v, %v", out.TrackingStartDate.Time, out.KeyCreationDate.Time, began, created)
	}
}

// TestGetKeyLastUsageSignVerify: a successful Sign counts; a Verify that
// fails, a dry run and an operation that is not tracked do not.
func TestGetKeyLastUsageSignVerify(t *testing.T) {
	f := newUsageFixture(t)
	ctx := context.Background()
	md := f.createSpec(t, "ECC_NIST_P256", "SIGN_VERIFY")
	id := *md.KeyId
	alg := "ECDSA_SHA_256"
	msg := []byte("message")
	f.clock.advance(time.Minute)
	signedAt := f.clock.now()
	var sig []byte
	req, ev, err := f.call("Sign", func(c *Caller) error {
		out, err := f.svc.Sign(ctx, c, &kmsapi.SignRequest{KeyId: &id, Message: msg, SigningAlgorithm: &alg})
		if err == nil {
			sig = out.Signature
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	wantUse(t, f.lastUsage(t, id), "Sign", req, ev, signedAt)

	f.clock.advance(time.Minute)
	bad := append([]byte(nil), sig...)
	bad[len(bad)-1] ^= 1
	_, _, err = f.call("Verify", func(c *Caller) error {
		_, err := f.svc.Verify(ctx, c, &kmsapi.VerifyRequest{KeyId: &id, Message: msg, Signature: bad, SigningAlgorithm: &alg})
		return err
	})
	wantException(t, err, "KMSInvalidSignatureException")
	_, _, err = f.call("Sign", func(c *Caller) error {
		_, err := f.svc.Sign(ctx, c, &kmsapi.SignRequest{KeyId: &id, Message: msg, SigningAlgorithm: &alg, DryRun: kmsapi.Bool(true)})
		return err
	})
	wantException(t, err, "DryRunOperationException")
	if _, _, err = f.call("GetPublicKey", func(c *Caller) error {
		_, err := f.svc.GetPublicKey(ctx, c, &kmsapi.GetPublicKeyRequest{KeyId: &id})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	wantUse(t, f.lastUsage(t, id), "Sign", req, ev, signedAt)

	f.clock.advance(time.Minute)
	req, ev, err = f.call("Verify", func(c *Caller) error {
		_, err := f.svc.Verify(ctx, c, &kmsapi.VerifyRequest{KeyId: &id, Message: msg, Signature: sig, SigningAlgorithm: &alg})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	wantUse(t, f.lastUsage(t, id), "Verify", req, ev, f.clock.now())
}

// TestGetKeyLastUsageReEncrypt: ReEncrypt counts for its source and its
// destination key.
func TestGetKeyLastUsageReEncrypt(t *testing.T) {
	f := newUsageFixture(t)
	ctx := context.Background()
	src, dst := f.createKey(t), f.createKey(t)
	var blob []byte
	encReq, encEv, err := f.call("Encrypt", func(c *Caller) error {
		out, err := f.svc.Encrypt(ctx, c, &kmsapi.EncryptRequest{KeyId: &src, Plaintext: []byte("pt")})
		if err == nil {
			blob = out.CiphertextBlob
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	encAt := f.clock.now()
	wantUse(t, f.lastUsage(t, src), "Encrypt", encReq, encEv, encAt)
	if u := f.lastUsage(t, dst).KeyLastUsage; *u != (kmsapi.KeyLastUsageData{}) {
		t.Fatalf("unused key: KeyLastUsage = %+v", u)
	}
	f.clock.advance(time.Second)
	req, ev, err := f.call("ReEncrypt", func(c *Caller) error {
		_, err := f.svc.ReEncrypt(ctx, c, &kmsapi.ReEncryptRequest{CiphertextBlob: blob, DestinationKeyId: &dst})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	wantUse(t, f.lastUsage(t, src), "ReEncrypt", req, ev, f.clock.now())
	wantUse(t, f.lastUsage(t, dst), "ReEncrypt", req, ev, f.clock.now())
}

// TestGetKeyLastUsageKeyStates: it answers for a key pending deletion,
// names keys by id or ARN only, never by alias, and never across
// accounts; the caller needs kms:GetKeyLastUsage.
func TestGetKeyLastUsageKeyStates(t *testing.T) {
	f := newUsageFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	req, ev, err := f.call("GenerateDataKey", func(c *Caller) error {
		_, err := f.svc.GenerateDataKey(ctx, c, &kmsapi.GenerateDataKeyRequest{KeyId: &id, NumberOfBytes: kmsapi.Int32(32)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	at := f.clock.now()
	if _, err := f.svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	out := f.lastUsage(t, id)
	wantUse(t, out, "GenerateDataKey", req, ev, at)
	wantUse(t, f.lastUsage(t, *out.KeyId), "GenerateDataKey", req, ev, at) // by key ARN

	if _, err := f.svc.CreateAlias(ctx, f.caller, &kmsapi.CreateAliasRequest{AliasName: kmsapi.String("alias/used"), TargetKeyId: kmsapi.String(f.createKey(t))}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"alias/used", "arn:aws:kms:us-east-1:111122223333:alias/used"} {
		_, err := f.svc.GetKeyLastUsage(ctx, f.caller, &kmsapi.GetKeyLastUsageRequest{KeyId: &name})
		wantException(t, err, "NotFoundException")
		if msg := Exception(err).Message; msg != "Invalid keyId '"+name+"'" {
			t.Errorf("%s: message %q", name, msg)
		}
	}
	other := &Caller{Account: "444455556666", Region: "us-east-1", ARN: "arn:aws:iam::444455556666:root"}
	_, err = f.svc.GetKeyLastUsage(ctx, other, &kmsapi.GetKeyLastUsageRequest{KeyId: out.KeyId})
	wantException(t, err, "NotFoundException")
	bob := &Caller{Account: f.caller.Account, Region: "us-east-1", ARN: "arn:aws:iam::111122223333:user/bob"}
	_, err = f.svc.GetKeyLastUsage(ctx, bob, &kmsapi.GetKeyLastUsageRequest{KeyId: &id})
	wantException(t, err, "AccessDeniedException")

	// Deleting the key deletes its record.
	f.clock.advance(31 * 24 * time.Hour)
	if n, err := f.svc.SweepDeletions(ctx); err != nil || n != 1 {
		t.Fatalf("SweepDeletions = %d, %v", n, err)
	}
	if _, err := f.cat.LastUse(ctx, f.caller.Account, "us-east-1", id); !errors.Is(err, catalog.ErrNotFound) {
		t.Errorf("last use of a deleted key: %v, want ErrNotFound", err)
	}
}

// TestGetKeyLastUsagePersists: uses reach storage in batches (FlushUsage,
// or the flusher every second) and on Close, and a reopened store
// answers with them.
func TestGetKeyLastUsagePersists(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kmsd.db")
	root := make([]byte, 32)
	rand.Read(root)
	b, err := barrier.New(root)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	caller := &Caller{Account: "111122223333", Region: "us-east-1", ARN: "arn:aws:iam::111122223333:root"}
	open := func() (*Service, *catalog.Catalog, func()) {
		st, err := sqlite.Open(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		cat := catalog.New(st, b)
		svc := New(cat, WithClock(clk.now))
		if err := svc.StartUsageTracking(ctx); err != nil {
			t.Fatal(err)
		}
		return svc, cat, func() { svc.Close(); st.Close() }
	}
	use := func(svc *Service, keyID, reqID string) {
		c := *caller
		c.RequestID = reqID
		if _, err := svc.Encrypt(ctx, &c, &kmsapi.EncryptRequest{KeyId: &keyID, Plaintext: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		svc.RecordUse(&c, "Encrypt", clk.now(), "ev-"+reqID)
	}
	svc, cat, closeAll := open()
	created, err := svc.CreateKey(ctx, caller, &kmsapi.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a, other := *created.KeyMetadata.KeyId, ""
	if created, err = svc.CreateKey(ctx, caller, &kmsapi.CreateKeyRequest{}); err != nil {
		t.Fatal(err)
	}
	other = *created.KeyMetadata.KeyId

	use(svc, a, "r1")
	if _, err := cat.LastUse(ctx, caller.Account, caller.Region, a); !errors.Is(err, catalog.ErrNotFound) {
		t.Fatalf("stored before any flush: %v", err)
	}
	if err := svc.FlushUsage(ctx); err != nil {
		t.Fatal(err)
	}
	if u, err := cat.LastUse(ctx, caller.Account, caller.Region, a); err != nil || u.RequestID != "r1" {
		t.Fatalf("after a flush: %+v, %v", u, err)
	}
	// The flusher runs by itself within a second or so.
	clk.advance(time.Second)
	use(svc, other, "r2")
	deadline := time.Now().Add(5 * time.Second)
	for {
		u, err := cat.LastUse(ctx, caller.Account, caller.Region, other)
		if err == nil && u.RequestID == "r2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the flusher did not store the use within 5 s: %+v, %v", u, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Close stores what is left.
	clk.advance(time.Second)
	use(svc, a, "r3")
	closeAll()

	svc, _, closeAll = open()
	defer closeAll()
	for keyID, want := range map[string]string{a: "r3", other: "r2"} {
		out, err := svc.GetKeyLastUsage(ctx, caller, &kmsapi.GetKeyLastUsageRequest{KeyId: &keyID})
		if err != nil {
			t.Fatal(err)
		}
		if u := out.KeyLastUsage; u.KmsRequestId == nil || *u.KmsRequestId != want || *u.CloudTrailEventId != "ev-"+want || *u.Operation != "Encrypt" {
			t.Errorf("after reopening: %s KeyLastUsage = %+v, want request %s", keyID, u, want)
		}
	}
}
