package kms

import (
	"context"
	"testing"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestGetKeyRotationStatusCrossAccount: AWS documents GetKeyRotationStatus
// as usable across accounts by key ARN; the key policy of the key's account
// and the caller's IAM policies decide, as for Encrypt.
func TestGetKeyRotationStatusCrossAccount(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	arn := "arn:aws:kms:us-east-1:111122223333:key/" + id
	if _, err := f.svc.EnableKeyRotation(ctx, f.caller, &kmsapi.EnableKeyRotationRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.CreateAlias(ctx, f.caller, &kmsapi.CreateAliasRequest{AliasName: kmsapi.String("alias/rot"), TargetKeyId: &id}); err != nil {
		t.Fatal(err)
	}
	carol := userCaller(t, "444455556666", "carol", allowAll)
	carolNoIAM := userCaller(t, "444455556666", "carol")
	get := func(c *Caller, keyID string) (*kmsapi.GetKeyRotationStatusResponse, error) {
		return f.svc.GetKeyRotationStatus(ctx, c, &kmsapi.GetKeyRotationStatusRequest{KeyId: &keyID})
	}

	// The default key policy trusts only the key's own account.
	_, err := get(carol, arn)
	wantException(t, err, "AccessDeniedException")

	doc := `{"Version":"2012-10-17","Statement":[
{"Sid":"root","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
{"Sid":"other","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::444455556666:root"},"Action":"kms:*","Resource":"*"}]}`
	if _, err := f.svc.PutKeyPolicy(ctx, f.caller, &kmsapi.PutKeyPolicyRequest{KeyId: &id, Policy: &doc}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		caller *Caller
		keyID  string
		want   string // "" for an answer, else the exception
	}{
		{"key ARN, key policy and IAM allow", carol, arn, ""},
		{"key ARN, no IAM policy", carolNoIAM, arn, "AccessDeniedException"},
		{"key id names a key of the caller's account", carol, id, "NotFoundException"},
		{"alias ARN of the other account", carol, "arn:aws:kms:us-east-1:111122223333:alias/rot", "NotFoundException"},
		{"key ARN in another region", carol, "arn:aws:kms:eu-west-1:111122223333:key/" + id, "NotFoundException"},
		{"owner by key id", f.caller, id, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := get(tt.caller, tt.keyID)
			if tt.want != "" {
				wantException(t, err, tt.want)
				return
			}
			if err != nil {
				t.Fatalf("GetKeyRotationStatus: %v", err)
			}
			if derefStr(out.KeyId) != arn || out.KeyRotationEnabled == nil || !*out.KeyRotationEnabled {
				t.Fatalf("GetKeyRotationStatus = KeyId %q, enabled %v; want %s, true", derefStr(out.KeyId), out.KeyRotationEnabled, arn)
			}
		})
	}

	// Operations AWS keeps to the key's own account stay there, whatever
	// the key policy says.
	_, err = f.svc.GetKeyPolicy(ctx, carol, &kmsapi.GetKeyPolicyRequest{KeyId: &arn})
	wantException(t, err, "NotFoundException")
	_, err = f.svc.EnableKeyRotation(ctx, carol, &kmsapi.EnableKeyRotationRequest{KeyId: &arn})
	wantException(t, err, "NotFoundException")
}

// TestRotateKeyOnDemand checks the answer of RotateKeyOnDemand (the key
// ARN), that it leaves the automatic schedule alone, and AWS's limit of
// 25 on-demand rotations per key (spec §8, §16.7), whose message is
// verbatim [S].
func TestRotateKeyOnDemand(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	arn := "arn:aws:kms:us-east-1:111122223333:key/" + id
	if _, err := f.svc.EnableKeyRotation(ctx, f.caller, &kmsapi.EnableKeyRotationRequest{KeyId: &id, RotationPeriodInDays: kmsapi.Int32(90)}); err != nil {
		t.Fatal(err)
	}
	status := func() *kmsapi.GetKeyRotationStatusResponse {
		t.Helper()
		st, err := f.svc.GetKeyRotationStatus(ctx, f.caller, &kmsapi.GetKeyRotationStatusRequest{KeyId: &id})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	next := status().NextRotationDate
	if next == nil {
		t.Fatal("no NextRotationDate with rotation enabled")
	}
	for i := range maxOnDemandRotations {
		f.clock.advance(day)
		out, err := f.svc.RotateKeyOnDemand(ctx, f.caller, &kmsapi.RotateKeyOnDemandRequest{KeyId: &id})
		if err != nil {
			t.Fatalf("on-demand rotation %d: %v", i+1, err)
		}
		if *out.KeyId != arn {
			t.Fatalf("RotateKeyOnDemand: KeyId = %q, want %q", *out.KeyId, arn)
		}
	}
	if got := status().NextRotationDate; got == nil || !got.Equal(next.Time) {
		t.Errorf("NextRotationDate after on-demand rotations = %v, want it unchanged at %v", got, next)
	}
	_, err := f.svc.RotateKeyOnDemand(ctx, f.caller, &kmsapi.RotateKeyOnDemandRequest{KeyId: &arn})
	wantMessage(t, err, "LimitExceededException",
		"The on-demand rotations limit has been reached for the given keyId. No more on-demand rotations can be performed for this key: "+arn)

	// Automatic rotations do not count against the limit, and still move
	// the schedule.
	f.clock.advance(90 * day)
	if n, err := f.svc.SweepRotations(ctx); err != nil || n != 1 {
		t.Fatalf("SweepRotations = %d, %v; want 1", n, err)
	}
	if got := status().NextRotationDate; got == nil || !got.After(next.Time) {
		t.Errorf("NextRotationDate after the automatic rotation = %v, want after %v", got, next)
	}
	lr, err := f.svc.ListKeyRotations(ctx, f.caller, &kmsapi.ListKeyRotationsRequest{KeyId: &id})
	if err != nil || len(lr.Rotations) != maxOnDemandRotations+1 {
		t.Fatalf("ListKeyRotations: %d rotations, %v; want %d", len(lr.Rotations), err, maxOnDemandRotations+1)
	}
}

// TestRotationChecksStateFirst is spec §1.4's order for the rotation
// operations: the key's state before its type.
func TestRotationChecksStateFirst(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name, spec, usage string
		disable, delete   bool
		want, msg         string // msg "" for the empty message, "-" not checked
	}{
		{"symmetric disabled", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", true, false, "DisabledException", "disabled"},
		{"symmetric pending deletion", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", false, true, "KMSInvalidStateException", "pending deletion"},
		{"RSA disabled", "RSA_2048", "SIGN_VERIFY", true, false, "DisabledException", "disabled"},
		{"RSA pending deletion", "RSA_2048", "ENCRYPT_DECRYPT", false, true, "KMSInvalidStateException", "pending deletion"},
		{"RSA enabled", "RSA_2048", "SIGN_VERIFY", false, false, "UnsupportedOperationException", ""},
		{"HMAC enabled", "HMAC_384", "GENERATE_VERIFY_MAC", false, false, "UnsupportedOperationException", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := f.createSpec(t, tc.spec, tc.usage)
			if tc.disable {
				if _, err := f.svc.DisableKey(ctx, f.caller, &kmsapi.DisableKeyRequest{KeyId: m.KeyId}); err != nil {
					t.Fatal(err)
				}
			}
			if tc.delete {
				if _, err := f.svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: m.KeyId}); err != nil {
					t.Fatal(err)
				}
			}
			msg := ""
			if tc.msg != "" {
				msg = *m.Arn + " is " + tc.msg + "."
			}
			_, err := f.svc.RotateKeyOnDemand(ctx, f.caller, &kmsapi.RotateKeyOnDemandRequest{KeyId: m.KeyId})
			wantMessage(t, err, tc.want, msg)
			if tc.msg != "" {
				_, err = f.svc.EnableKeyRotation(ctx, f.caller, &kmsapi.EnableKeyRotationRequest{KeyId: m.KeyId})
				wantMessage(t, err, tc.want, msg)
			}
		})
	}
}

// TestGetKeyRotationStatusPendingDeletion: while a key is pending deletion
// its rotation status reads false, and cancelling the deletion brings the
// earlier status back (model documentation of GetKeyRotationStatus).
func TestGetKeyRotationStatusPendingDeletion(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	if _, err := f.svc.EnableKeyRotation(ctx, f.caller, &kmsapi.EnableKeyRotationRequest{KeyId: &id, RotationPeriodInDays: kmsapi.Int32(100)}); err != nil {
		t.Fatal(err)
	}
	get := func() *kmsapi.GetKeyRotationStatusResponse {
		t.Helper()
		st, err := f.svc.GetKeyRotationStatus(ctx, f.caller, &kmsapi.GetKeyRotationStatusRequest{KeyId: &id})
		if err != nil {
			t.Fatalf("GetKeyRotationStatus: %v", err)
		}
		return st
	}
	before := get()
	if _, err := f.svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	if st := get(); *st.KeyRotationEnabled || st.RotationPeriodInDays != nil || st.NextRotationDate != nil {
		t.Errorf("pending deletion: %+v, want only KeyRotationEnabled false", st)
	}
	if _, err := f.svc.CancelKeyDeletion(ctx, f.caller, &kmsapi.CancelKeyDeletionRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	after := get()
	if !*after.KeyRotationEnabled || *after.RotationPeriodInDays != 100 || !after.NextRotationDate.Equal(before.NextRotationDate.Time) {
		t.Errorf("after CancelKeyDeletion: %+v, want the earlier status %+v", after, before)
	}
}

// TestSweepRotationsRechecksDue: a sweep acts on candidates scanned
// earlier (SweepRound), which may be stale by the time it updates them. A
// key rotated already (a sweep cut off and run again, or run by the next
// controller), disabled, with rotation turned off or deleted since the
// scan is left alone; every key still due is rotated exactly once.
func TestSweepRotationsRechecksDue(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ids := map[string]string{}
	for _, name := range []string{"due", "disabled", "rotation off", "deleted", "rotated by the last sweep"} {
		id := f.createKey(t)
		if _, err := f.svc.EnableKeyRotation(ctx, f.caller, &kmsapi.EnableKeyRotationRequest{KeyId: &id, RotationPeriodInDays: kmsapi.Int32(90)}); err != nil {
			t.Fatal(err)
		}
		ids[name] = id
	}
	f.clock.advance(91 * day)
	round, err := f.svc.SweepRound(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// What happens between the scan and the sweep's updates.
	id := ids["disabled"]
	if _, err := f.svc.DisableKey(ctx, f.caller, &kmsapi.DisableKeyRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	id = ids["rotation off"]
	if _, err := f.svc.DisableKeyRotation(ctx, f.caller, &kmsapi.DisableKeyRotationRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	if err := f.cat.DeleteKey(ctx, catalog.Name("us-east-1", ids["deleted"])); err != nil {
		t.Fatal(err)
	}
	first, err := f.svc.SweepRound(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := f.svc.SweepRotations(first); err != nil || n != 2 {
		t.Fatalf("first sweep: %d rotated, %v; want 2 (due, and rotated by the last sweep)", n, err)
	}
	// The stale round again: nothing is still due.
	if n, err := f.svc.SweepRotations(round); err != nil || n != 0 {
		t.Fatalf("sweep of the stale round: %d rotated, %v; want 0", n, err)
	}
	for name, want := range map[string]int{"due": 1, "disabled": 0, "rotation off": 0, "rotated by the last sweep": 1} {
		id := ids[name]
		k, err := f.cat.Key(ctx, catalog.Name("us-east-1", id))
		if err != nil {
			t.Fatal(err)
		}
		if len(k.Rotations) != want || int(k.Current) != want+1 {
			t.Errorf("%s: %d rotations, current version %d; want %d, %d", name, len(k.Rotations), k.Current, want, want+1)
		}
	}
}

// TestSweepRotationsBatches: a sweep rotates single-Region keys
// catalog.KeysPerUpdate to a transaction. Across several batches, with keys disabled
// after the scan among them, every key still due is rotated exactly once
// and encrypts under its new material, and the others are left alone.
func TestSweepRotationsBatches(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	n := 2*catalog.KeysPerUpdate + 3
	ids := make([]string, n)
	for i := range ids {
		ids[i] = f.createKey(t)
		if _, err := f.svc.EnableKeyRotation(ctx, f.caller, &kmsapi.EnableKeyRotationRequest{KeyId: &ids[i], RotationPeriodInDays: kmsapi.Int32(90)}); err != nil {
			t.Fatal(err)
		}
	}
	f.clock.advance(91 * day)
	round, err := f.svc.SweepRound(ctx)
	if err != nil {
		t.Fatal(err)
	}
	disabled := map[string]bool{}
	for i := 0; i < n; i += 10 {
		if _, err := f.svc.DisableKey(ctx, f.caller, &kmsapi.DisableKeyRequest{KeyId: &ids[i]}); err != nil {
			t.Fatal(err)
		}
		disabled[ids[i]] = true
	}
	got, err := f.svc.SweepRotations(round)
	if err != nil || got != n-len(disabled) {
		t.Fatalf("SweepRotations = %d, %v; want %d", got, err, n-len(disabled))
	}
	if got, err := f.svc.SweepRotations(round); err != nil || got != 0 {
		t.Fatalf("the same round again: %d rotated, %v; want 0", got, err)
	}
	for _, id := range ids {
		k, err := f.cat.Key(ctx, catalog.Name("us-east-1", id))
		if err != nil {
			t.Fatal(err)
		}
		want := 1
		if disabled[id] {
			want = 0
		}
		if len(k.Rotations) != want || int(k.Current) != want+1 {
			t.Fatalf("%s: %d rotations, current version %d; want %d, %d", id, len(k.Rotations), k.Current, want, want+1)
		}
		if disabled[id] {
			continue
		}
		enc, err := f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("after the sweep")})
		if err != nil {
			t.Fatal(err)
		}
		dec, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{CiphertextBlob: enc.CiphertextBlob})
		if err != nil || string(dec.Plaintext) != "after the sweep" {
			t.Fatalf("%s: Decrypt = %v, %v", id, dec, err)
		}
	}
}
