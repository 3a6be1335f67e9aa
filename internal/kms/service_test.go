package kms

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	svc     *Service
	cat     *catalog.Catalog
	barrier *barrier.Barrier
	// db is the catalog's database, which custom key stores share as in
	// kmsd: a key's transaction checks its store's record there.
	db     storage.Store
	clock  *clock
	dir    string
	caller *Caller
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b := newBarrier(t)
	clk := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	cat := catalog.New(st, b)
	svc := New(cat, WithClock(clk.now))
	t.Cleanup(svc.Close)
	return &fixture{
		svc:     svc,
		cat:     cat,
		barrier: b,
		db:      st,
		clock:   clk,
		dir:     dir,
		caller:  &Caller{Account: "111122223333", Region: "us-east-1", ARN: "arn:aws:iam::111122223333:root"},
	}
}

func (f *fixture) createKey(t *testing.T) string {
	t.Helper()
	out, err := f.svc.CreateKey(context.Background(), f.caller, &kmsapi.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return *out.KeyMetadata.KeyId
}

func wantException(t *testing.T, err error, name string) {
	t.Helper()
	var e *kmsapi.Exception
	if !errors.As(err, &e) || e.Name != name {
		t.Fatalf("error = %v, want %s", err, name)
	}
}

func (f *fixture) encrypt(t *testing.T, id string, pt []byte, ec map[string]string) []byte {
	t.Helper()
	out, err := f.svc.Encrypt(context.Background(), f.caller, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: pt, EncryptionContext: ec})
	if err != nil {
		t.Fatal(err)
	}
	return out.CiphertextBlob
}

func (f *fixture) decrypt(blob []byte, ec map[string]string) ([]byte, error) {
	out, err := f.svc.Decrypt(context.Background(), f.caller, &kmsapi.DecryptRequest{CiphertextBlob: blob, EncryptionContext: ec})
	if err != nil {
		return nil, err
	}
	return out.Plaintext, nil
}

func TestEncryptionContextIsUnambiguous(t *testing.T) {
	f := newFixture(t)
	id := f.createKey(t)
	blob := f.encrypt(t, id, []byte("secret"), map[string]string{"ab": "c"})
	if _, err := f.decrypt(blob, map[string]string{"a": "bc"}); err == nil {
		t.Fatal(`{"ab":"c"} ciphertext decrypted under {"a":"bc"}`)
	} else {
		wantException(t, err, "InvalidCiphertextException")
	}
	if _, err := f.decrypt(blob, nil); err == nil {
		t.Fatal("decrypted without its context")
	}
	pt, err := f.decrypt(blob, map[string]string{"ab": "c"})
	if err != nil || string(pt) != "secret" {
		t.Fatalf("decrypt = %q, %v", pt, err)
	}
}

func TestEveryFlippedBitIsInvalidCiphertext(t *testing.T) {
	f := newFixture(t)
	id := f.createKey(t)
	blob := f.encrypt(t, id, []byte("hello"), nil)
	for i := range len(blob) * 8 {
		bad := bytes.Clone(blob)
		bad[i/8] ^= 1 << (i % 8)
		_, err := f.decrypt(bad, nil)
		if err == nil {
			t.Fatalf("bit %d flipped: decrypted", i)
		}
		var e *kmsapi.Exception
		if !errors.As(err, &e) || e.Name != "InvalidCiphertextException" {
			t.Fatalf("bit %d flipped: %v", i, err)
		}
	}
}

func TestRotationKeepsOldCiphertexts(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	before := f.encrypt(t, id, []byte("v1"), nil)
	if _, err := f.svc.RotateKeyOnDemand(ctx, f.caller, &kmsapi.RotateKeyOnDemandRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	after := f.encrypt(t, id, []byte("v2"), nil)
	for blob, want := range map[*[]byte]string{&before: "v1", &after: "v2"} {
		pt, err := f.decrypt(*blob, nil)
		if err != nil || string(pt) != want {
			t.Fatalf("decrypt = %q, %v; want %q", pt, err, want)
		}
	}
	rot, err := f.svc.ListKeyRotations(ctx, f.caller, &kmsapi.ListKeyRotationsRequest{KeyId: &id})
	if err != nil || len(rot.Rotations) != 1 || *rot.Rotations[0].RotationType != "ON_DEMAND" {
		t.Fatalf("ListKeyRotations = %+v, %v", rot, err)
	}
}

func TestAutomaticRotationSweeper(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	if _, err := f.svc.EnableKeyRotation(ctx, f.caller, &kmsapi.EnableKeyRotationRequest{KeyId: &id, RotationPeriodInDays: kmsapi.Int32(90)}); err != nil {
		t.Fatal(err)
	}
	old := f.encrypt(t, id, []byte("x"), nil)
	f.clock.advance(89 * day)
	if n, err := f.svc.SweepRotations(ctx); err != nil || n != 0 {
		t.Fatalf("SweepRotations before due = %d, %v", n, err)
	}
	f.clock.advance(day)
	if n, err := f.svc.SweepRotations(ctx); err != nil || n != 1 {
		t.Fatalf("SweepRotations when due = %d, %v", n, err)
	}
	rot, _ := f.svc.ListKeyRotations(ctx, f.caller, &kmsapi.ListKeyRotationsRequest{KeyId: &id})
	if len(rot.Rotations) != 1 || *rot.Rotations[0].RotationType != "AUTOMATIC" {
		t.Fatalf("rotations = %+v", rot.Rotations)
	}
	if _, err := f.decrypt(old, nil); err != nil {
		t.Fatal(err)
	}
}

func TestDeletionSweeper(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	alias := "alias/doomed"
	if _, err := f.svc.CreateAlias(ctx, f.caller, &kmsapi.CreateAliasRequest{AliasName: &alias, TargetKeyId: &id}); err != nil {
		t.Fatal(err)
	}
	out, err := f.svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: &id, PendingWindowInDays: kmsapi.Int32(7)})
	if err != nil {
		t.Fatal(err)
	}
	if want := f.clock.now().Add(7 * day); !out.DeletionDate.Equal(want) {
		t.Fatalf("DeletionDate = %v, want %v", out.DeletionDate, want)
	}
	_, err = f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("x")})
	wantException(t, err, "KMSInvalidStateException")

	f.clock.advance(7*day - time.Second)
	if n, err := f.svc.SweepDeletions(ctx); err != nil || n != 0 {
		t.Fatalf("sweep before the window ends = %d, %v", n, err)
	}
	f.clock.advance(time.Second)
	if n, err := f.svc.SweepDeletions(ctx); err != nil || n != 1 {
		t.Fatalf("sweep at the end of the window = %d, %v", n, err)
	}
	_, err = f.svc.DescribeKey(ctx, f.caller, &kmsapi.DescribeKeyRequest{KeyId: &id})
	wantException(t, err, "NotFoundException")
	_, err = f.svc.DescribeKey(ctx, f.caller, &kmsapi.DescribeKeyRequest{KeyId: &alias})
	wantException(t, err, "NotFoundException")
	aliases, _ := f.svc.ListAliases(ctx, f.caller, &kmsapi.ListAliasesRequest{})
	for _, a := range aliases.Aliases {
		if a.TargetKeyId != nil || !reservedAlias(*a.AliasName) {
			t.Fatalf("alias left after deletion: %s → %s", *a.AliasName, derefStr(a.TargetKeyId))
		}
	}
}

func TestCancelDeletionLeavesKeyDisabled(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	if _, err := f.svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.CancelKeyDeletion(ctx, f.caller, &kmsapi.CancelKeyDeletionRequest{KeyId: &id}); err != nil {
		t.Fatal(err)
	}
	d, _ := f.svc.DescribeKey(ctx, f.caller, &kmsapi.DescribeKeyRequest{KeyId: &id})
	if *d.KeyMetadata.KeyState != "Disabled" || d.KeyMetadata.DeletionDate != nil {
		t.Fatalf("after cancel: %+v", d.KeyMetadata)
	}
	_, err := f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("x")})
	wantException(t, err, "DisabledException")
}

// TestMaterialNeverInClear greps every file of the database for the raw
// key material of the keys it holds.
func TestMaterialNeverInClear(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var ids []string
	for range 5 {
		id := f.createKey(t)
		if _, err := f.svc.RotateKeyOnDemand(ctx, f.caller, &kmsapi.RotateKeyOnDemandRequest{KeyId: &id}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	var materials [][]byte
	for _, id := range ids {
		k, err := f.cat.Key(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range k.Versions {
			m, err := f.barrier.Open("key/"+id+"/v"+itoa(int(v.Number)), v.Sealed)
			if err != nil || len(m) != 32 {
				t.Fatalf("open material: %v", err)
			}
			materials = append(materials, m)
		}
	}
	files, _ := filepath.Glob(filepath.Join(f.dir, "kmsd.db*"))
	if len(files) == 0 {
		t.Fatal("no database files")
	}
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range materials {
			if bytes.Contains(data, m) || bytes.Contains(data, m[:16]) {
				t.Fatalf("%s holds key material in clear", name)
			}
		}
	}
}

func TestGenerateDataKey(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	ec := map[string]string{"purpose": "test"}
	out, err := f.svc.GenerateDataKey(ctx, f.caller, &kmsapi.GenerateDataKeyRequest{KeyId: &id, KeySpec: kmsapi.String("AES_128"), EncryptionContext: ec})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Plaintext) != 16 {
		t.Fatalf("data key of %d bytes", len(out.Plaintext))
	}
	pt, err := f.decrypt(out.CiphertextBlob, ec)
	if err != nil || !bytes.Equal(pt, out.Plaintext) {
		t.Fatalf("decrypt data key = %x, %v", pt, err)
	}
	_, err = f.svc.GenerateDataKey(ctx, f.caller, &kmsapi.GenerateDataKeyRequest{KeyId: &id})
	wantException(t, err, "ValidationException")
	_, err = f.svc.GenerateDataKey(ctx, f.caller, &kmsapi.GenerateDataKeyRequest{KeyId: &id, KeySpec: kmsapi.String("AES_256"), NumberOfBytes: kmsapi.Int32(8)})
	wantException(t, err, "ValidationException")
}

func TestReEncryptAndIncorrectKey(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	a, b := f.createKey(t), f.createKey(t)
	blob := f.encrypt(t, a, []byte("move me"), map[string]string{"k": "v"})
	out, err := f.svc.ReEncrypt(ctx, f.caller, &kmsapi.ReEncryptRequest{CiphertextBlob: blob, SourceEncryptionContext: map[string]string{"k": "v"}, DestinationKeyId: &b})
	if err != nil {
		t.Fatal(err)
	}
	pt, err := f.decrypt(out.CiphertextBlob, nil)
	if err != nil || string(pt) != "move me" {
		t.Fatalf("decrypt re-encrypted = %q, %v", pt, err)
	}
	_, err = f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{CiphertextBlob: blob, KeyId: &b, EncryptionContext: map[string]string{"k": "v"}})
	wantException(t, err, "IncorrectKeyException")
}

func TestKeysAreScopedToRegion(t *testing.T) {
	f := newFixture(t)
	id := f.createKey(t)
	other := *f.caller
	other.Region = "eu-west-1"
	_, err := f.svc.DescribeKey(context.Background(), &other, &kmsapi.DescribeKeyRequest{KeyId: &id})
	wantException(t, err, "NotFoundException")
}

func TestKeyPolicyRules(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := f.createKey(t)
	got, err := f.svc.GetKeyPolicy(ctx, f.caller, &kmsapi.GetKeyPolicyRequest{KeyId: &id})
	if err != nil || *got.Policy != policy.DefaultKeyPolicy("111122223333") {
		t.Fatalf("default policy = %v, %v", got, err)
	}
	tests := []struct {
		name, doc string
		bypass    bool
		want      string
	}{
		{"not json", "{", false, "MalformedPolicyDocumentException"},
		{"locks the caller out", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::999999999999:root"},"Action":"kms:*","Resource":"*"}]}`, false, "MalformedPolicyDocumentException"},
		{"allows the account", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"111122223333"},"Action":"kms:*","Resource":"*"}]}`, false, ""},
		// Last: once bypassed, the policy really locks the caller out.
		{"lockout bypassed", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::999999999999:root"},"Action":"kms:*","Resource":"*"}]}`, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.svc.PutKeyPolicy(ctx, f.caller, &kmsapi.PutKeyPolicyRequest{KeyId: &id, Policy: &tt.doc, BypassPolicyLockoutSafetyCheck: &tt.bypass})
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantException(t, err, tt.want)
		})
	}
}
