package kms

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"sync"
	"testing"

	"github.com/kmsd/kmsd/internal/hsm"
	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestStoreExceptions: every keystore error maps to an exception of the
// KMS model.
func TestStoreExceptions(t *testing.T) {
	for _, e := range storeExceptions {
		if _, ok := kmsapi.Exceptions[e.name]; !ok {
			t.Errorf("%v maps to %s, not an exception of the model", e.err, e.name)
		}
	}
	wantException(t, storeErr(&keystore.StateError{Op: keystore.OpDelete, State: keystore.Connected, ID: "cks-1"}), "CustomKeyStoreInvalidStateException")
	if e := Exception(storeErr(errors.New("other"))); e.Name != "KMSInternalException" {
		t.Fatalf("an unknown error is %s", e.Name)
	}
}

// fakeClusters accepts every cluster; its certificate is its id unless
// certs says otherwise.
type fakeClusters struct{ certs map[string]string }

func (f *fakeClusters) CheckCluster(account, region, id, anchor string) (string, error) {
	if id == "cluster-missingmissing" {
		return "", keystore.ErrClusterNotFound
	}
	if c, ok := f.certs[id]; ok {
		return c, nil
	}
	return id, nil
}

// fakeBacking connects unless fail is set.
type fakeBacking struct{ fail error }

func (f *fakeBacking) Connect(ctx context.Context, st *keystore.Store, secret, next []byte) (bool, error) {
	return next != nil, f.fail
}
func (f *fakeBacking) Disconnect(ctx context.Context, st *keystore.Store) error { return nil }

// fakeHSM keeps AES keys in memory, by cluster and label.
type fakeHSM struct {
	mu   sync.Mutex
	keys map[string]cipher.AEAD
	// made, when set, runs after CreateKey made a key, before it returns:
	// between CreateKey's check of the store and its write of the key.
	made func()
}

func (f *fakeHSM) CreateKey(ctx context.Context, clusterID, label string) error {
	if f.made != nil {
		defer f.made()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	k := make([]byte, 32)
	rand.Read(k)
	b, _ := aes.NewCipher(k)
	g, _ := cipher.NewGCM(b)
	f.keys[clusterID+"/"+label] = g
	return nil
}

func (f *fakeHSM) key(clusterID, label string) (cipher.AEAD, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g, ok := f.keys[clusterID+"/"+label]
	if !ok {
		return nil, hsm.ErrKeyNotFound
	}
	return g, nil
}

func (f *fakeHSM) Encrypt(ctx context.Context, clusterID, label string, pt, aad []byte) ([]byte, []byte, error) {
	g, err := f.key(clusterID, label)
	if err != nil {
		return nil, nil, err
	}
	iv := make([]byte, 12)
	rand.Read(iv)
	return iv, g.Seal(nil, iv, pt, aad), nil
}

func (f *fakeHSM) Decrypt(ctx context.Context, clusterID, label string, iv, ct, aad []byte) ([]byte, error) {
	g, err := f.key(clusterID, label)
	if err != nil {
		return nil, err
	}
	pt, err := g.Open(nil, iv, ct, aad)
	if err != nil {
		return nil, hsm.ErrInvalidRequest
	}
	return pt, nil
}

func (f *fakeHSM) GenerateRandom(ctx context.Context, clusterID string, n int) ([]byte, error) {
	b := make([]byte, n)
	rand.Read(b)
	return b, nil
}

func (f *fakeHSM) DeleteKey(ctx context.Context, clusterID, label string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.keys, clusterID+"/"+label)
	return nil
}

func newStoreFixture(t *testing.T) (*fixture, *keystore.Manager, *fakeHSM, *fakeBacking) {
	t.Helper()
	f := newFixture(t)
	st := f.db // the catalog's database, as in kmsd
	back := &fakeBacking{}
	m, err := keystore.New(context.Background(), st, f.barrier, keystore.Config{
		Backings: map[string]keystore.Backing{keystore.TypeCloudHSM: back}, Now: f.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	h := &fakeHSM{keys: map[string]cipher.AEAD{}}
	f.svc.SetKeyStores(m, &fakeClusters{}, h)
	return f, m, h, back
}

func str(s string) *string { return &s }

func (f *fixture) createStore(t *testing.T, name, cluster string) string {
	t.Helper()
	out, err := f.svc.CreateCustomKeyStore(context.Background(), f.caller, &kmsapi.CreateCustomKeyStoreRequest{
		CustomKeyStoreName: str(name), CloudHsmClusterId: str(cluster), TrustAnchorCertificate: str("anchor"), KeyStorePassword: str("kmsPswd1")})
	if err != nil {
		t.Fatal(err)
	}
	return *out.CustomKeyStoreId
}

func TestDescribeCustomKeyStores(t *testing.T) {
	ctx := context.Background()
	f, _, _, _ := newStoreFixture(t)
	var ids []string
	for _, n := range []string{"a", "b", "c"} {
		ids = append(ids, f.createStore(t, n, "cluster-"+n+"aaaaaaaaaa"))
		f.clock.advance(1e9)
	}
	var got []string
	var marker *string
	for pages := 0; ; pages++ {
		limit := int32(2)
		out, err := f.svc.DescribeCustomKeyStores(ctx, f.caller, &kmsapi.DescribeCustomKeyStoresRequest{Limit: &limit, Marker: marker})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range out.CustomKeyStores {
			got = append(got, *e.CustomKeyStoreId)
			if e.ConnectionErrorCode != nil || *e.ConnectionState != "DISCONNECTED" || *e.CloudHsmClusterId == "" {
				t.Fatalf("entry %+v", e)
			}
		}
		if !*out.Truncated {
			if out.NextMarker != nil || pages != 1 {
				t.Fatalf("last page: marker %v after %d pages", out.NextMarker, pages)
			}
			break
		}
		marker = out.NextMarker
	}
	if len(got) != 3 || got[0] != ids[0] || got[2] != ids[2] {
		t.Fatalf("pages gave %v, want %v", got, ids)
	}
	for name, tc := range map[string]struct {
		in   *kmsapi.DescribeCustomKeyStoresRequest
		want string
	}{
		"bad marker":      {&kmsapi.DescribeCustomKeyStoresRequest{Marker: str("xyz")}, "InvalidMarkerException"},
		"id and name":     {&kmsapi.DescribeCustomKeyStoresRequest{CustomKeyStoreId: str(ids[0]), CustomKeyStoreName: str("a")}, "ValidationException"},
		"unknown id":      {&kmsapi.DescribeCustomKeyStoresRequest{CustomKeyStoreId: str("cks-00000000000000000")}, "CustomKeyStoreNotFoundException"},
		"unknown name":    {&kmsapi.DescribeCustomKeyStoresRequest{CustomKeyStoreName: str("zz")}, "CustomKeyStoreNotFoundException"},
		"other account":   {&kmsapi.DescribeCustomKeyStoresRequest{CustomKeyStoreId: str(ids[0])}, ""},
		"missing cluster": {nil, ""},
	} {
		t.Run(name, func(t *testing.T) {
			switch name {
			case "other account":
				c := *f.caller
				c.Account = "444455556666"
				_, err := f.svc.DescribeCustomKeyStores(ctx, &c, tc.in)
				wantException(t, err, "CustomKeyStoreNotFoundException")
			case "missing cluster":
				_, err := f.svc.CreateCustomKeyStore(ctx, f.caller, &kmsapi.CreateCustomKeyStoreRequest{CustomKeyStoreName: str("m"),
					CloudHsmClusterId: str("cluster-missingmissing"), TrustAnchorCertificate: str("x"), KeyStorePassword: str("kmsPswd1")})
				wantException(t, err, "CloudHsmClusterNotFoundException")
			default:
				_, err := f.svc.DescribeCustomKeyStores(ctx, f.caller, tc.in)
				wantException(t, err, tc.want)
			}
		})
	}
}

func TestCloudHSMKeys(t *testing.T) {
	ctx := context.Background()
	f, m, h, back := newStoreFixture(t)
	id := f.createStore(t, "ks", "cluster-aaaaaaaaaaa")
	origin := "AWS_CLOUDHSM"
	_, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Origin: &origin, CustomKeyStoreId: &id})
	wantException(t, err, "CustomKeyStoreInvalidStateException")
	_, err = f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Origin: &origin})
	wantException(t, err, "UnsupportedOperationException")

	connect := func() {
		t.Helper()
		if _, err := f.svc.ConnectCustomKeyStore(ctx, f.caller, &kmsapi.ConnectCustomKeyStoreRequest{CustomKeyStoreId: &id}); err != nil {
			t.Fatal(err)
		}
		m.Wait()
	}
	disconnect := func() {
		t.Helper()
		if _, err := f.svc.DisconnectCustomKeyStore(ctx, f.caller, &kmsapi.DisconnectCustomKeyStoreRequest{CustomKeyStoreId: &id}); err != nil {
			t.Fatal(err)
		}
		m.Wait()
	}
	connect()
	out, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Origin: &origin, CustomKeyStoreId: &id})
	if err != nil {
		t.Fatal(err)
	}
	md := out.KeyMetadata
	if *md.Origin != origin || *md.CustomKeyStoreId != id || *md.CloudHsmClusterId != "cluster-aaaaaaaaaaa" || len(h.keys) != 1 {
		t.Fatalf("metadata %+v, HSM keys %d", md, len(h.keys))
	}
	enc, err := f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: md.KeyId, Plaintext: []byte("hello"), EncryptionContext: map[string]string{"a": "b"}})
	if err != nil {
		t.Fatal(err)
	}
	dec, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"a": "b"}})
	if err != nil || string(dec.Plaintext) != "hello" {
		t.Fatalf("decrypt: %v %v", err, dec)
	}
	// Custom-store keys have no KeyMaterialId (custom key stores spec §5.8, §5.9).
	if md.CurrentKeyMaterialId != nil || dec.KeyMaterialId != nil {
		t.Errorf("custom-store key: CurrentKeyMaterialId %v, Decrypt KeyMaterialId %v; want neither", md.CurrentKeyMaterialId, dec.KeyMaterialId)
	}
	_, err = f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{CiphertextBlob: enc.CiphertextBlob})
	wantException(t, err, "InvalidCiphertextException")

	disconnect()
	d, err := f.svc.DescribeKey(ctx, f.caller, &kmsapi.DescribeKeyRequest{KeyId: md.KeyId})
	if err != nil || *d.KeyMetadata.KeyState != "Unavailable" || *d.KeyMetadata.Enabled {
		t.Fatalf("describe while disconnected: %v %+v", err, d)
	}
	_, err = f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: md.KeyId, Plaintext: []byte("x")})
	wantException(t, err, "KMSInvalidStateException")

	// A failed connect keeps the key Unavailable.
	back.fail = &keystore.ConnectError{Code: keystore.CodeUserLoggedIn}
	connect()
	ds, _ := f.svc.DescribeCustomKeyStores(ctx, f.caller, &kmsapi.DescribeCustomKeyStoresRequest{CustomKeyStoreId: &id})
	if e := ds.CustomKeyStores[0]; *e.ConnectionState != "FAILED" || e.ConnectionErrorCode == nil || *e.ConnectionErrorCode != "USER_LOGGED_IN" {
		t.Fatalf("failed store: %+v", e)
	}
	_, err = f.svc.ConnectCustomKeyStore(ctx, f.caller, &kmsapi.ConnectCustomKeyStoreRequest{CustomKeyStoreId: &id})
	wantException(t, err, "CustomKeyStoreInvalidStateException")
	disconnect()
	back.fail = nil

	// Deletion: the key blocks the store until it is really deleted; its
	// material then leaves the cluster if the store is connected.
	if _, err := f.svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: md.KeyId}); err != nil {
		t.Fatal(err)
	}
	_, err = f.svc.DeleteCustomKeyStore(ctx, f.caller, &kmsapi.DeleteCustomKeyStoreRequest{CustomKeyStoreId: &id})
	wantException(t, err, "CustomKeyStoreHasCMKsException")
	connect()
	f.clock.advance(31 * 24 * 3600 * 1e9)
	if n, err := f.svc.SweepDeletions(ctx); err != nil || n != 1 || len(h.keys) != 0 {
		t.Fatalf("sweep: %d %v, HSM keys %d", n, err, len(h.keys))
	}
	_, err = f.svc.DeleteCustomKeyStore(ctx, f.caller, &kmsapi.DeleteCustomKeyStoreRequest{CustomKeyStoreId: &id})
	wantException(t, err, "CustomKeyStoreInvalidStateException")
	disconnect()
	if _, err := f.svc.DeleteCustomKeyStore(ctx, f.caller, &kmsapi.DeleteCustomKeyStoreRequest{CustomKeyStoreId: &id}); err != nil {
		t.Fatal(err)
	}
}

func TestUpdateCustomKeyStore(t *testing.T) {
	ctx := context.Background()
	f, m, _, _ := newStoreFixture(t)
	f.svc.clusters = &fakeClusters{certs: map[string]string{"cluster-bbbbbbbbbbb": "cluster-aaaaaaaaaaa"}}
	id := f.createStore(t, "ks", "cluster-aaaaaaaaaaa")
	f.createStore(t, "other", "cluster-ccccccccccc")
	up := func(in kmsapi.UpdateCustomKeyStoreRequest) error {
		in.CustomKeyStoreId = &id
		_, err := f.svc.UpdateCustomKeyStore(ctx, f.caller, &in)
		return err
	}
	wantException(t, up(kmsapi.UpdateCustomKeyStoreRequest{}), "ValidationException")
	wantException(t, up(kmsapi.UpdateCustomKeyStoreRequest{NewCustomKeyStoreName: str("other")}), "CustomKeyStoreNameInUseException")
	wantException(t, up(kmsapi.UpdateCustomKeyStoreRequest{CloudHsmClusterId: str("cluster-ddddddddddd")}), "CloudHsmClusterNotRelatedException")
	wantException(t, up(kmsapi.UpdateCustomKeyStoreRequest{CloudHsmClusterId: str("cluster-missingmissing")}), "CloudHsmClusterNotFoundException")
	if err := up(kmsapi.UpdateCustomKeyStoreRequest{CloudHsmClusterId: str("cluster-bbbbbbbbbbb"), KeyStorePassword: str("kmsPswd2")}); err != nil {
		t.Fatal(err)
	}
	st, _ := m.Get(f.caller.Account, f.caller.Region, id)
	if pw, _ := m.Password(st); st.ClusterID != "cluster-bbbbbbbbbbb" || string(pw) != "kmsPswd2" {
		t.Fatalf("after update: %s %q", st.ClusterID, pw)
	}
	f.svc.ConnectCustomKeyStore(ctx, f.caller, &kmsapi.ConnectCustomKeyStoreRequest{CustomKeyStoreId: &id})
	m.Wait()
	wantException(t, up(kmsapi.UpdateCustomKeyStoreRequest{KeyStorePassword: str("kmsPswd3")}), "CustomKeyStoreInvalidStateException")
	if err := up(kmsapi.UpdateCustomKeyStoreRequest{NewCustomKeyStoreName: str("renamed")}); err != nil {
		t.Fatal(err)
	}
}
