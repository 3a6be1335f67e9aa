package kms

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
	"github.com/kmsd/kmsd/internal/storage"
)

// storedPolicy reads the stored record of the key id of region through
// the storage layer: its policy member, and whether it has one.
func storedPolicy(t *testing.T, f *fixture, region, id string) (string, bool) {
	t.Helper()
	b, err := f.db.Get(context.Background(), "key/"+catalog.Name(region, id))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	raw, ok := m["policy"]
	if !ok {
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	return s, true
}

// TestDefaultPolicyNotStored (issue #16): on both drivers, keys given the
// default key policy — by CreateKey of every kind (symmetric, asymmetric,
// HMAC, imported, multi-Region) and by ReplicateKey — are stored without
// its text, and GetKeyPolicy and authorization answer as before, from the
// cache and from a service on another handle of the database that reads
// the records afresh. A custom policy is stored inline; PutKeyPolicy back
// to the default text drops it again.
func TestDefaultPolicyNotStored(t *testing.T) {
	for _, d := range sharedDrivers {
		t.Run(d.name, func(t *testing.T) {
			a, b := d.open(t)
			f := newMRFixture(t)
			f.db = a
			f.cat = catalog.New(a, f.barrier)
			f.svc = New(f.cat, WithClock(f.clock.now))
			t.Cleanup(f.svc.Close)
			testDefaultPolicyNotStored(t, f, b)
		})
	}
}

func testDefaultPolicyNotStored(t *testing.T, f *mrFixture, other storage.Store) {
	ctx := context.Background()
	def := policy.DefaultKeyPolicy(f.caller.Account)
	type key struct{ name, region, id, policy string }
	var ks []key
	create := func(name string, in *kmsapi.CreateKeyRequest) string {
		t.Helper()
		out, err := f.svc.CreateKey(ctx, f.in(east), in)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		pol := def
		if in.Policy != nil {
			pol = *in.Policy
		}
		ks = append(ks, key{name, east, *out.KeyMetadata.KeyId, pol})
		return *out.KeyMetadata.KeyId
	}
	create("symmetric", &kmsapi.CreateKeyRequest{})
	create("rsa", &kmsapi.CreateKeyRequest{KeySpec: kmsapi.String("RSA_2048"), KeyUsage: kmsapi.String("SIGN_VERIFY")})
	create("ecc", &kmsapi.CreateKeyRequest{KeySpec: kmsapi.String("ECC_NIST_P256"), KeyUsage: kmsapi.String("SIGN_VERIFY")})
	create("hmac", &kmsapi.CreateKeyRequest{KeySpec: kmsapi.String("HMAC_256"), KeyUsage: kmsapi.String("GENERATE_VERIFY_MAC")})
	create("imported", &kmsapi.CreateKeyRequest{Origin: kmsapi.String("EXTERNAL")})
	custom := `{"Version":"2012-10-17","Statement":[` + rootAllowStatement() + `]}`
	customID := create("custom", &kmsapi.CreateKeyRequest{Policy: &custom})
	mrk := create("multi-Region primary", &kmsapi.CreateKeyRequest{MultiRegion: boolp(true)})
	f.replicate(t, f.svc, mrk, west)
	ks = append(ks, key{"replica", west, mrk, def})
	if _, err := f.svc.ReplicateKey(ctx, f.in(east), &kmsapi.ReplicateKeyRequest{KeyId: &mrk, ReplicaRegion: kmsapi.String(apse), Policy: &custom}); err != nil {
		t.Fatal(err)
	}
	ks = append(ks, key{"replica with a policy", apse, mrk, custom})

	check := func(stage string) {
		t.Helper()
		// A second service over the same database, nothing cached: its
		// reads decode the stored records.
		fresh := New(catalog.New(other, f.barrier), WithClock(f.clock.now))
		defer fresh.Close()
		for _, k := range ks {
			text, inline := storedPolicy(t, f.fixture, k.region, k.id)
			if inline != (k.policy != def) || (inline && text != k.policy) {
				t.Errorf("%s: %s stored with policy member %v %q; want one only for a policy other than the default", stage, k.name, inline, text)
			}
			for _, svc := range []*Service{f.svc, fresh} {
				out, err := svc.GetKeyPolicy(ctx, f.in(k.region), &kmsapi.GetKeyPolicyRequest{KeyId: &k.id})
				if err != nil {
					t.Fatalf("%s: GetKeyPolicy(%s): %v", stage, k.name, err)
				}
				if *out.Policy != k.policy || *out.PolicyName != "default" {
					t.Errorf("%s: GetKeyPolicy(%s) = %q, want %q", stage, k.name, *out.Policy, k.policy)
				}
				// Authorization: the default policy hands the decision to
				// the account's IAM policies; another account is refused.
				arn := "arn:aws:kms:" + k.region + ":111122223333:key/" + k.id
				alice := userCaller(t, "111122223333", "alice", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:DescribeKey","Resource":"`+arn+`"}]}`)
				alice.Region = k.region
				if _, err := svc.DescribeKey(ctx, alice, &kmsapi.DescribeKeyRequest{KeyId: &k.id}); err != nil {
					t.Errorf("%s: alice's DescribeKey(%s): %v", stage, k.name, err)
				}
				bob := userCaller(t, "111122223333", "bob")
				bob.Region = k.region
				_, err = svc.DescribeKey(ctx, bob, &kmsapi.DescribeKeyRequest{KeyId: &k.id})
				wantException(t, err, "AccessDeniedException")
				carol := userCaller(t, "444455556666", "carol", allowAll)
				carol.Region = k.region
				_, err = svc.DescribeKey(ctx, carol, &kmsapi.DescribeKeyRequest{KeyId: &arn})
				wantException(t, err, "AccessDeniedException")
			}
		}
	}
	check("created")

	put := func(i int, doc string) {
		t.Helper()
		if _, err := f.svc.PutKeyPolicy(ctx, f.in(ks[i].region), &kmsapi.PutKeyPolicyRequest{KeyId: &ks[i].id, Policy: &doc}); err != nil {
			t.Fatal(err)
		}
		ks[i].policy = doc
	}
	for i, k := range ks {
		switch k.id {
		case customID:
			put(i, def) // back to the default text: stored without it
		case ks[0].id:
			put(i, custom)
		}
	}
	check("after PutKeyPolicy")
}
