package kms

import (
	"context"
	"slices"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

func TestAWSManagedAliasesSorted(t *testing.T) {
	if !slices.IsSorted(awsManagedAliases) {
		t.Fatal("awsManagedAliases is not sorted; ListAliases merges it by name")
	}
}

// TestListAliasesShowsAWSManagedAliases: every account and Region lists
// the predefined AWS managed aliases, with an AliasArn and no TargetKeyId,
// merged in name order with the account's own, page by page; a KeyId
// filter leaves them out.
func TestListAliasesShowsAWSManagedAliases(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	list := func(in *kmsapi.ListAliasesRequest) *kmsapi.ListAliasesResponse {
		t.Helper()
		out, err := f.svc.ListAliases(ctx, f.caller, in)
		if err != nil {
			t.Fatalf("ListAliases: %v", err)
		}
		return out
	}
	fresh := list(&kmsapi.ListAliasesRequest{})
	if len(fresh.Aliases) != len(awsManagedAliases) || *fresh.Truncated {
		t.Fatalf("fresh account: %d aliases (truncated %v), want the %d predefined ones", len(fresh.Aliases), *fresh.Truncated, len(awsManagedAliases))
	}
	for i, a := range fresh.Aliases {
		name := awsManagedAliases[i]
		if *a.AliasName != name || *a.AliasArn != "arn:aws:kms:us-east-1:111122223333:"+name ||
			a.TargetKeyId != nil || a.CreationDate != nil || a.LastUpdatedDate != nil {
			t.Errorf("entry %d = %s %s %v, want %s with its ARN only", i, *a.AliasName, *a.AliasArn, derefStr(a.TargetKeyId), name)
		}
	}

	id := f.createKey(t)
	mine := []string{"alias/a", "alias/aws-lookalike", "alias/awsome", "alias/zz"}
	for _, name := range mine {
		if _, err := f.svc.CreateAlias(ctx, f.caller, &kmsapi.CreateAliasRequest{AliasName: kmsapi.String(name), TargetKeyId: &id}); err != nil {
			t.Fatalf("CreateAlias %s: %v", name, err)
		}
	}
	want := slices.Sorted(slices.Values(append(slices.Clone(awsManagedAliases), mine...)))
	for _, limit := range []int32{1, 3, 5, 100} {
		var got []string
		in := &kmsapi.ListAliasesRequest{Limit: kmsapi.Int32(limit)}
		for {
			out := list(in)
			for _, a := range out.Aliases {
				got = append(got, *a.AliasName)
				if (a.TargetKeyId != nil) != slices.Contains(mine, *a.AliasName) {
					t.Errorf("limit %d: %s has TargetKeyId %v", limit, *a.AliasName, derefStr(a.TargetKeyId))
				}
			}
			if !*out.Truncated {
				break
			}
			in.Marker = out.NextMarker
		}
		if !slices.Equal(got, want) {
			t.Errorf("limit %d: pages list %v, want %v", limit, got, want)
		}
	}
	byKey := list(&kmsapi.ListAliasesRequest{KeyId: &id})
	var names []string
	for _, a := range byKey.Aliases {
		names = append(names, *a.AliasName)
	}
	if !slices.Equal(names, mine) {
		t.Errorf("ListAliases with KeyId: %v, want %v", names, mine)
	}
}

// TestAliasNameRules: the alias/aws/ namespace is AWS's for CreateAlias,
// UpdateAlias and DeleteAlias alike, and a colon — which the model's
// pattern allows — is refused [O].
func TestAliasNameRules(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	create := func(name string) error {
		_, err := f.svc.CreateAlias(ctx, f.caller, &kmsapi.CreateAliasRequest{AliasName: &name, TargetKeyId: &id})
		return err
	}
	for _, tc := range []struct {
		op, name string
		exc, msg string
	}{
		{"CreateAlias", "alias/aws/mine", "NotAuthorizedException", ""},
		{"CreateAlias", "alias/aws/ebs", "NotAuthorizedException", ""},
		{"UpdateAlias", "alias/aws/ebs", "NotAuthorizedException", ""},
		{"UpdateAlias", "alias/aws/unknown", "NotAuthorizedException", ""},
		{"DeleteAlias", "alias/aws/s3", "NotAuthorizedException", ""},
		{"CreateAlias", "alias/my:alias", "ValidationException", "alias/my:alias contains invalid characters for an alias"},
		{"CreateAlias", "alias/", "ValidationException", `Alias must start with the prefix "alias/". Please see https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html`},
		{"CreateAlias", "alias/aws", "", ""},
		{"CreateAlias", "alias/awsome/x", "", ""},
	} {
		t.Run(tc.op+" "+tc.name, func(t *testing.T) {
			var err error
			switch tc.op {
			case "CreateAlias":
				err = create(tc.name)
			case "UpdateAlias":
				_, err = f.svc.UpdateAlias(ctx, f.caller, &kmsapi.UpdateAliasRequest{AliasName: &tc.name, TargetKeyId: &id})
			case "DeleteAlias":
				_, err = f.svc.DeleteAlias(ctx, f.caller, &kmsapi.DeleteAliasRequest{AliasName: &tc.name})
			}
			if tc.exc == "" {
				if err != nil {
					t.Fatalf("%s %s: %v", tc.op, tc.name, err)
				}
				return
			}
			wantMessage(t, err, tc.exc, tc.msg)
		})
	}
}
