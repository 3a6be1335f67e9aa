package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	jsonv2 "github.com/go-json-experiment/json"

	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/policy"
	"github.com/kmsd/kmsd/internal/storage"
)

// customPolicy is a key policy other than the default: the default's
// statement without its Id, compact.
const customPolicy = `{"Version":"2012-10-17","Statement":[{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}]}`

// rawPolicy reads the stored record of the key named name through the
// storage layer and returns its policy member, and whether it has one.
func rawPolicy(t *testing.T, st storage.Store, name string) (text string, present bool, size int) {
	t.Helper()
	b, err := st.Get(context.Background(), keyPath(name))
	if err != nil {
		t.Fatalf("raw record of %s: %v", name, err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("raw record of %s: %v", name, err)
	}
	raw, ok := m["policy"]
	if !ok {
		return "", false, len(b)
	}
	if err := json.Unmarshal(raw, &text); err != nil {
		t.Fatalf("policy member of %s: %v", name, err)
	}
	return text, true, len(b)
}

// TestDefaultPolicyElided: a key record whose policy is its account's
// default key policy is stored without the text, on every path that
// writes key records, and read back with the default byte for byte, by a
// catalog that had it cached and by one that reads the database; any
// other policy is stored inline; a policy changed back to the default is
// elided again.
func TestDefaultPolicyElided(t *testing.T) {
	c := newCatalog(t)
	ctx := context.Background()
	def := policy.DefaultKeyPolicy(testAccount)
	const mrk = "mrk-00112233445566778899aabbccddeeff"
	mk := func(id, region, pol string) *Key {
		k := realKey(t, c, id)
		k.Region, k.Policy = region, pol
		return k
	}
	otherDefault := policy.DefaultKeyPolicy("444455556666")
	// name → the policy the key was written with.
	want := map[string]string{}
	create := func(k *Key) {
		t.Helper()
		if err := c.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		want[k.Name()] = k.Policy
	}
	create(mk("00000001-0000-4000-8000-000000000000", "us-east-1", def))
	create(mk("00000002-0000-4000-8000-000000000000", "us-east-1", customPolicy))
	// The default policy of another account is not this key's default.
	create(mk("00000003-0000-4000-8000-000000000000", "us-east-1", otherDefault))
	create(mk(mrk, "us-east-1", def))
	bulk := []*Key{mk("00000004-0000-4000-8000-000000000000", "us-east-1", def), mk("00000005-0000-4000-8000-000000000000", "us-east-1", customPolicy)}
	if err := c.CreateKeys(ctx, bulk); err != nil {
		t.Fatal(err)
	}
	seeded := mk("00000006-0000-4000-8000-000000000000", "us-east-1", def)
	if err := c.CreateAll(ctx, []*Key{seeded}, nil, nil); err != nil {
		t.Fatal(err)
	}
	for _, k := range append(bulk, seeded) {
		want[k.Name()] = k.Policy
	}
	// A replica made with UpdateRelated, and the primary it rewrites.
	if _, err := c.UpdateRelated(ctx, Name("us-east-1", mrk), func(ks []*Key, b *Batch) error {
		ks[0].ReplicaRegions = []string{"eu-west-1"}
		r := mk(mrk, "eu-west-1", def)
		r.PrimaryRegion, r.ReplicaRegions = "us-east-1", []string{"eu-west-1"}
		b.Create(r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want[Name("eu-west-1", mrk)] = def

	check := func(stage string) {
		t.Helper()
		fresh := New(c.store, c.barrier)
		for name, pol := range want {
			text, present, _ := rawPolicy(t, c.store, name)
			isDefault := pol == def
			if present == isDefault || (present && text != pol) {
				t.Errorf("%s: %s stored with policy member %v %q; want it only for a policy other than the default", stage, name, present, text)
			}
			for _, cat := range []*Catalog{c, fresh} {
				k, err := cat.Key(ctx, name)
				if err != nil {
					t.Fatal(err)
				}
				if k.Policy != pol {
					t.Errorf("%s: %s read with policy %q, want %q", stage, name, k.Policy, pol)
				}
			}
		}
		// Every decoding path puts the default back.
		seen := 0
		if err := fresh.ScanKeys(ctx, func(k *Key) error {
			seen++
			if k.Policy != want[k.Name()] {
				t.Errorf("%s: ScanKeys read %s with policy %q", stage, k.Name(), k.Policy)
			}
			return nil
		}); err != nil || seen != len(want) {
			t.Fatalf("%s: ScanKeys saw %d of %d: %v", stage, seen, len(want), err)
		}
		if err := fresh.AllKeys(ctx, func(k *Key) error {
			if k.Policy != want[k.Name()] {
				t.Errorf("%s: AllKeys read %s with policy %q", stage, k.Name(), k.Policy)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	check("created")

	// PutKeyPolicy's path: custom → default → custom, each read back by
	// UpdateKey from the transaction.
	set := func(name, pol string) {
		t.Helper()
		if _, err := c.UpdateKey(ctx, name, func(k *Key) error {
			if k.Policy != want[name] {
				return errors.New("UpdateKey read " + name + " with another policy: " + k.Policy)
			}
			k.Policy = pol
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		want[name] = pol
	}
	set("00000002-0000-4000-8000-000000000000", def)
	set("00000001-0000-4000-8000-000000000000", customPolicy)
	check("changed")
	set("00000001-0000-4000-8000-000000000000", def)
	// An update of something else keeps the default elided.
	if _, err := c.UpdateKey(ctx, "00000004-0000-4000-8000-000000000000", func(k *Key) error { k.Description = "changed"; return nil }); err != nil {
		t.Fatal(err)
	}
	check("changed back")
}

// TestOldFormatRecord: records written before level 2 (the default policy
// inline) and the empty policy member a level-1 kmsd writes back when it
// updates a record it read without one decode to the record the new format
// gives, sharing one copy of the default text.
func TestOldFormatRecord(t *testing.T) {
	c := newCatalog(t)
	ctx := context.Background()
	const newID, oldID, emptyID = "00000001-0000-4000-8000-000000000000", "00000002-0000-4000-8000-000000000000", "00000003-0000-4000-8000-000000000000"
	k := realKey(t, c, newID)
	if err := c.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	_, _, newSize := rawPolicy(t, c.store, newID)
	// The same record as level 1 wrote it: every member, the policy inline.
	b, err := c.store.Get(ctx, keyPath(newID))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	put := func(id string, pol string) {
		t.Helper()
		m["id"], m["policy"] = id, pol
		v, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.store.Put(ctx, keyPath(id), v); err != nil {
			t.Fatal(err)
		}
	}
	put(oldID, policy.DefaultKeyPolicy(testAccount))
	put(emptyID, "")
	_, present, oldSize := rawPolicy(t, c.store, oldID)
	if !present || oldSize-newSize < 300 {
		t.Fatalf("old-format record %d bytes (policy member %v), new %d", oldSize, present, newSize)
	}
	t.Logf("record with the default policy: %d bytes inline, %d elided", oldSize, newSize)

	fresh := New(c.store, c.barrier)
	want, err := fresh.Key(ctx, newID)
	if err != nil {
		t.Fatal(err)
	}
	if want.Policy != policy.DefaultKeyPolicy(testAccount) {
		t.Fatalf("elided record read with policy %q", want.Policy)
	}
	for _, id := range []string{oldID, emptyID} {
		got, err := fresh.Key(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		w := *want
		w.ID = id
		if !reflect.DeepEqual(got, &w) {
			t.Errorf("%s decodes as %+v, want %+v", id, got, &w)
		}
		if unsafe.StringData(got.Policy) != unsafe.StringData(want.Policy) {
			t.Errorf("%s does not share the default policy text", id)
		}
	}
	// Rewritten by this kmsd, the old records lose the text.
	for _, id := range []string{oldID, emptyID} {
		if _, err := fresh.UpdateKey(ctx, id, func(k *Key) error { k.Description = "rewritten"; return nil }); err != nil {
			t.Fatal(err)
		}
		if _, present, _ := rawPolicy(t, c.store, id); present {
			t.Errorf("%s rewritten with its default policy inline", id)
		}
	}
}

// TestKeyWithoutPolicyRefused: a key record without a policy is not
// written (it would read back as the default), and nothing is stored.
func TestKeyWithoutPolicyRefused(t *testing.T) {
	c := newCatalog(t)
	ctx := context.Background()
	k := realKey(t, c, "00000001-0000-4000-8000-000000000000")
	k.Policy = ""
	if err := c.CreateKey(ctx, k); !errors.Is(err, errNoPolicy) {
		t.Fatalf("CreateKey without a policy: %v", err)
	}
	if _, err := c.store.Get(ctx, keyPath(k.ID)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("record stored anyway: %v", err)
	}
	k.Policy = testPolicy
	if err := c.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdateKey(ctx, k.ID, func(k *Key) error { k.Policy = ""; return nil }); !errors.Is(err, errNoPolicy) {
		t.Fatalf("UpdateKey to no policy: %v", err)
	}
	if got := readKey(t, New(c.store, c.barrier), k.ID); got.Policy != testPolicy {
		t.Fatalf("policy after the refused update: %q", got.Policy)
	}
}

// TestDecodeKeySharesFields: records decoded among many others share one
// copy of each field most keys hold equal (the decoder's own cache gave
// hundreds), and an enumeration's value is the program's literal, which
// the kms package's comparisons then match by address.
func TestDecodeKeySharesFields(t *testing.T) {
	c := newCatalog(t)
	ids := makeKeys(t, c, 5000)
	copies := map[string]map[*byte]bool{}
	note := func(field, v string) {
		if copies[field] == nil {
			copies[field] = map[*byte]bool{}
		}
		copies[field][unsafe.StringData(v)] = true
	}
	var last *Key
	for _, id := range ids {
		b, err := c.store.Get(t.Context(), keyPath(id))
		if err != nil {
			t.Fatal(err)
		}
		k, err := decodeKey(b, &c.policies)
		if err != nil {
			t.Fatal(err)
		}
		note("account", k.Account)
		note("region", k.Region)
		note("keyUsage", k.KeyUsage)
		note("keySpec", k.KeySpec)
		note("origin", k.Origin)
		note("state", string(k.State))
		last = k
	}
	for field, m := range copies {
		if len(m) != 1 {
			t.Errorf("%s: %d copies over %d records, want 1", field, len(m), len(ids))
		}
	}
	if unsafe.StringData(last.KeySpec) != unsafe.StringData(keys.Symmetric) ||
		unsafe.StringData(string(last.State)) != unsafe.StringData(string(keys.Enabled)) {
		t.Errorf("key spec %q and state %q are not the program's literals", last.KeySpec, last.State)
	}
}

// TestDecodeKeySharesDefault: records of one account stored without the
// text share one copy of it; another account's default is its own, and
// decoding makes no copy of the text.
func TestDecodeKeySharesDefault(t *testing.T) {
	c := newCatalog(t)
	k := realKey(t, c, "00000001-0000-4000-8000-000000000000")
	rec, err := encodeKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(rec), "key-default-1") {
		t.Fatalf("default policy stored: %s", rec)
	}
	a, err := decodeKey(rec, &c.policies)
	if err != nil {
		t.Fatal(err)
	}
	b, err := decodeKey(rec, &c.policies)
	if err != nil {
		t.Fatal(err)
	}
	if a.Policy != testPolicy || unsafe.StringData(a.Policy) != unsafe.StringData(b.Policy) {
		t.Fatal("two records of one account do not share the default policy")
	}
	k.Account = "444455556666"
	k.Policy = policy.DefaultKeyPolicy(k.Account)
	other, err := encodeKey(k)
	if err != nil {
		t.Fatal(err)
	}
	o, err := decodeKey(other, &c.policies)
	if err != nil {
		t.Fatal(err)
	}
	if o.Policy != k.Policy {
		t.Fatalf("other account's record read with %q", o.Policy)
	}
	// Past the first decoding, the text is not copied: what a record
	// costs is its own members.
	inline, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	elided := testing.AllocsPerRun(100, func() { decodeKey(other, &c.policies) })
	full := testing.AllocsPerRun(100, func() { decodeKey(inline, &c.policies) })
	// Not under -race: there sync.Pool drops objects at random, and with
	// them the decoder's pooled state, so counts move by whole allocations
	// (CI once read 8 and 8).
	if elided >= full && !raceEnabled {
		t.Errorf("decoding the elided record makes %v allocations, the inline one %v", elided, full)
	}
}

// fullKey is a key record with every member set (checked by
// allMembersSet), with texts that need escaping.
func fullKey(t *testing.T, c *Catalog, account, pol, desc string) *Key {
	t.Helper()
	k := realKey(t, c, "mrk-00112233445566778899aabbccddeeff")
	due := time.Date(2026, 3, 4, 5, 6, 7, 891_000_000, time.UTC)
	local := time.Date(2026, 3, 4, 5, 6, 7, 0, time.FixedZone("", 2*3600))
	k.Account, k.Policy, k.Description = account, pol, desc
	k.CustomKeyStoreID, k.XksKeyID = "cks-1234567890abcdef0", "xks-"+desc
	k.State = keys.PendingDeletion
	k.DeletionDate, k.PendingWindowInDays = &due, 7
	k.Tags = []Tag{{Key: "k2", Value: ""}, {Key: "k\"1", Value: desc}}
	k.RotationEnabled, k.RotationPeriodInDays, k.NextRotation = true, 90, &local
	k.Rotations = []Rotation{{Date: due, Type: "ON_DEMAND"}, {Date: local, Type: "AUTOMATIC"}}
	k.Versions = append(k.Versions, Version{Number: 2, Created: local, Sealed: []byte{0, 1, 2, 255}, Public: []byte("pub"),
		MaterialID: strings.Repeat("ab", 32), ImportState: "IMPORTED", ExpirationModel: "KEY_MATERIAL_EXPIRES",
		ValidTo: &due, MaterialDescription: desc, Derived: true})
	k.Current = 2
	k.PrimaryRegion, k.ReplicaRegions = "us-east-1", []string{"eu-west-1", "ap-southeast-2"}
	k.Pending = &Transition{Kind: TransitionPrimary, Due: due, Restore: keys.Enabled, PrimaryRegion: "eu-west-1"}
	k.LocalKMS = true
	return k
}

// allMembersSet fails the test if a field of v (a struct, through pointers
// and the first element of slices) is its zero value, so that a member
// added to Key later is covered by TestDecodeKeyLikeV1 once it is set in
// fullKey.
func allMembersSet(t *testing.T, path string, v reflect.Value) {
	t.Helper()
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			t.Errorf("%s is nil", path)
			return
		}
		allMembersSet(t, path, v.Elem())
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			if v.Interface().(time.Time).IsZero() {
				t.Errorf("%s is zero", path)
			}
			return
		}
		for i := range v.NumField() {
			allMembersSet(t, path+"."+v.Type().Field(i).Name, v.Field(i))
		}
	case reflect.Slice:
		if v.Len() == 0 {
			t.Errorf("%s is empty", path)
			return
		}
		if v.Type().Elem().Kind() != reflect.Uint8 {
			allMembersSet(t, path+"[last]", v.Index(v.Len()-1))
		}
	default:
		if v.IsZero() {
			t.Errorf("%s is zero", path)
		}
	}
}

// TestDecodeKeyLikeV1: decodeKey (go-json-experiment/json) reads what
// encodeKey writes exactly as encoding/json does — every member, texts
// that need escaping, invalid UTF-8 (which encoding/json writes as
// U+FFFD), times in other zones — and a record the stricter decoder
// refuses (a duplicate member) is still read as encoding/json reads it.
func TestDecodeKeyLikeV1(t *testing.T) {
	c := newCatalog(t)
	v1 := func(b []byte) *Key {
		t.Helper()
		k := new(Key)
		if err := json.Unmarshal(b, k); err != nil {
			t.Fatal(err)
		}
		if k.Policy == "" {
			k.Policy = policy.DefaultKeyPolicy(k.Account)
		}
		return k
	}
	allMembersSet(t, "Key", reflect.ValueOf(fullKey(t, c, testAccount, customPolicy, "x")))
	for _, tc := range []struct{ name, account, policy, desc string }{
		{"default policy", testAccount, testPolicy, "plain"},
		{"custom policy", testAccount, customPolicy, "plain"},
		{"other account", "444455556666", policy.DefaultKeyPolicy("444455556666"), "plain"},
		{"escapes", testAccount, testPolicy, "q\"b\\s/<>&\u2028\u2029\t\n\x01 é 鍵 🔑"},
		{"invalid UTF-8", testAccount, testPolicy, "bad \xff\xfe end"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := fullKey(t, c, tc.account, tc.policy, tc.desc)
			rec, err := encodeKey(k)
			if err != nil {
				t.Fatal(err)
			}
			// The fast decoder itself reads it, not the fallback.
			if err := jsonv2.Unmarshal(rec, new(Key)); err != nil {
				t.Fatalf("go-json-experiment/json refuses the record: %v", err)
			}
			got, err := decodeKey(rec, &c.policies)
			if err != nil {
				t.Fatal(err)
			}
			if want := v1(rec); !reflect.DeepEqual(got, want) {
				t.Errorf("decodeKey:\n%+v\nencoding/json:\n%+v", got, want)
			}
			if got.Policy != tc.policy {
				t.Errorf("policy %q, want %q", got.Policy, tc.policy)
			}
		})
	}
	// The stricter decoder refuses a duplicate member; the record is read
	// as encoding/json reads it (the last one wins).
	rec, err := encodeKey(fullKey(t, c, testAccount, testPolicy, "first"))
	if err != nil {
		t.Fatal(err)
	}
	dup := append(rec[:len(rec)-1:len(rec)-1], `,"description":"second"}`...)
	got, err := decodeKey(dup, &c.policies)
	if err != nil {
		t.Fatal(err)
	}
	if want := v1(dup); got.Description != "second" || !reflect.DeepEqual(got, want) {
		t.Errorf("record with a duplicate member:\n%+v\nencoding/json:\n%+v", got, want)
	}
	if _, err := decodeKey([]byte(`{"id":`), &c.policies); err == nil {
		t.Error("a truncated record decoded")
	}
}
