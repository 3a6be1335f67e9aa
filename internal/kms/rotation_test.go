package kms

import (
	"context"
	"testing"

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
