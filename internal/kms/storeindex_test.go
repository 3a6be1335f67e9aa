package kms

import (
	"context"
	"encoding/pem"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// readCounter counts the records the catalog's reads return.
type readCounter struct {
	storage.Store
	n atomic.Int64
}

func (s *readCounter) Get(ctx context.Context, key string) ([]byte, error) {
	v, err := s.Store.Get(ctx, key)
	if err == nil {
		s.n.Add(1)
	}
	return v, err
}

func (s *readCounter) List(ctx context.Context, prefix, after string, limit int) ([]storage.Entry, error) {
	es, err := s.Store.List(ctx, prefix, after, limit)
	s.n.Add(int64(len(es)))
	return es, err
}

// TestStoreChecksReadIndex: with 3,000 other keys in the catalog,
// CreateKey's XksKeyAlreadyInUseException and DeleteCustomKeyStore's
// CustomKeyStoreHasCMKsException are answered as before — a key pending
// deletion still blocks its store and keeps its external key in use, the
// final deletion frees both — from a handful of records, not by reading
// every key (issue #16: 45–58 s each on a million keys). The proxy is the
// real XKS handler over HTTPS.
func TestStoreChecksReadIndex(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "kmsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b := newBarrier(t)
	counter := &readCounter{Store: st}
	cat := catalog.New(counter, b)
	if err := cat.InitStoreIndex(ctx); err != nil { // as kmsd does at start
		t.Fatal(err)
	}
	clk := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	svc := New(cat, WithClock(clk.now))
	t.Cleanup(svc.Close)
	f := &fixture{svc: svc, cat: cat, barrier: b, clock: clk, dir: dir,
		caller: &Caller{Account: "111122223333", Region: "us-east-1", ARN: "arn:aws:iam::111122223333:root"}}

	// 3,000 keys in no custom key store.
	const others = 3000
	for i := 0; i < others; i += 1000 {
		var batch []*catalog.Key
		for j := i; j < i+1000; j++ {
			batch = append(batch, &catalog.Key{ID: fmt.Sprintf("%08d-4444-4000-8000-000000000000", j), Account: f.caller.Account,
				Region: f.caller.Region, Created: clk.now(), KeyUsage: keys.EncryptDecrypt, KeySpec: keys.Symmetric,
				Origin: "AWS_KMS", State: keys.Enabled, Policy: policy.DefaultKeyPolicy(f.caller.Account), Current: 1})
		}
		if err := cat.CreateKeys(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}

	// The proxy, with external keys ext and ext2.
	h := xksProxy(t, map[string][]byte{"ext": nil, "ext2": nil})
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	kst := st // the catalog's database, as in kmsd; its reads are not counted
	ext := &keystore.External{CABundle: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}),
		Timeout: 5 * time.Second}
	m, err := keystore.New(ctx, kst, b, keystore.Config{Backings: map[string]keystore.Backing{keystore.TypeExternal: ext}, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	svc.SetKeyStores(m, &fakeClusters{}, nil)
	svc.SetExternal(ext)
	cs, err := svc.CreateCustomKeyStore(ctx, f.caller, xksReq("xks", keystore.XKSPublic, "https://"+srv.Listener.Addr().String(), ""))
	if err != nil {
		t.Fatal(err)
	}
	storeID := cs.CustomKeyStoreId
	setConnected := func(want bool) {
		t.Helper()
		if want {
			_, err = svc.ConnectCustomKeyStore(ctx, f.caller, &kmsapi.ConnectCustomKeyStoreRequest{CustomKeyStoreId: storeID})
		} else {
			_, err = svc.DisconnectCustomKeyStore(ctx, f.caller, &kmsapi.DisconnectCustomKeyStoreRequest{CustomKeyStoreId: storeID})
		}
		if err != nil {
			t.Fatal(err)
		}
		m.Wait()
		d, err := svc.DescribeCustomKeyStores(ctx, f.caller, &kmsapi.DescribeCustomKeyStoresRequest{CustomKeyStoreId: storeID})
		if err != nil {
			t.Fatal(err)
		}
		if s := *d.CustomKeyStores[0].ConnectionState; (s == "CONNECTED") != want {
			t.Fatalf("store %s, want connected %v", s, want)
		}
	}
	createExt := func(xksKeyID string) (*kmsapi.CreateKeyResponse, error) {
		return svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Origin: str("EXTERNAL_KEY_STORE"),
			CustomKeyStoreId: storeID, XksKeyId: str(xksKeyID)})
	}
	deleteStore := func() error {
		_, err := svc.DeleteCustomKeyStore(ctx, f.caller, &kmsapi.DeleteCustomKeyStoreRequest{CustomKeyStoreId: storeID})
		return err
	}
	// reads runs op and returns the records the catalog read for it.
	reads := func(op func()) int64 {
		counter.n.Store(0)
		op()
		n := counter.n.Load()
		t.Logf("%d records read", n)
		return n
	}
	const most = 20 // far below the 3,000 a scan reads

	setConnected(true)
	ck, err := createExt("ext")
	if err != nil {
		t.Fatal(err)
	}
	keyID := ck.KeyMetadata.KeyId
	if n := reads(func() {
		_, err := createExt("ext")
		wantException(t, err, "XksKeyAlreadyInUseException")
	}); n > most {
		t.Errorf("CreateKey with an XksKeyId in use read %d records of a %d-key catalog", n, others+1)
	}
	if n := reads(func() {
		if _, err := createExt("ext2"); err != nil {
			t.Fatal(err)
		}
	}); n > most {
		t.Errorf("CreateKey with a free XksKeyId read %d records of a %d-key catalog", n, others+1)
	}

	setConnected(false)
	if n := reads(func() { wantException(t, deleteStore(), "CustomKeyStoreHasCMKsException") }); n > most {
		t.Errorf("DeleteCustomKeyStore of a store with keys read %d records of a %d-key catalog", n, others+2)
	}
	// Both keys pending deletion: the store still has them, ext is still
	// in use.
	ks, err := cat.ListKeys(ctx, f.caller.Account, f.caller.Region, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	var extKeys []string
	for _, id := range ks {
		if k, err := cat.Key(ctx, id); err == nil && k.CustomKeyStoreID == *storeID {
			extKeys = append(extKeys, id)
		}
	}
	if len(extKeys) != 2 {
		t.Fatalf("%d keys in the external store, want 2", len(extKeys))
	}
	for _, id := range extKeys {
		if _, err := svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: str(id), PendingWindowInDays: ptr32(7)}); err != nil {
			t.Fatal(err)
		}
	}
	wantException(t, deleteStore(), "CustomKeyStoreHasCMKsException")
	setConnected(true)
	_, err = createExt("ext")
	wantException(t, err, "XksKeyAlreadyInUseException")
	// Cancelled: still the store's and still in use.
	if _, err := svc.CancelKeyDeletion(ctx, f.caller, &kmsapi.CancelKeyDeletionRequest{KeyId: keyID}); err != nil {
		t.Fatal(err)
	}
	_, err = createExt("ext")
	wantException(t, err, "XksKeyAlreadyInUseException")
	if _, err := svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: keyID, PendingWindowInDays: ptr32(7)}); err != nil {
		t.Fatal(err)
	}

	// After the waiting period the sweeper deletes them: ext is free and
	// the store can go.
	clk.advance(8 * 24 * time.Hour)
	if n, err := svc.SweepDeletions(ctx); err != nil || n != 2 {
		t.Fatalf("sweep: %d deleted, %v; want 2", n, err)
	}
	again, err := createExt("ext")
	if err != nil {
		t.Fatalf("CreateKey with ext after its key was deleted: %v", err)
	}
	if _, err := svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: again.KeyMetadata.KeyId, PendingWindowInDays: ptr32(7)}); err != nil {
		t.Fatal(err)
	}
	clk.advance(8 * 24 * time.Hour)
	if n, err := svc.SweepDeletions(ctx); err != nil || n != 1 {
		t.Fatalf("sweep: %d deleted, %v; want 1", n, err)
	}
	setConnected(false)
	if n := reads(func() {
		if err := deleteStore(); err != nil {
			t.Fatal(err)
		}
	}); n > most {
		t.Errorf("DeleteCustomKeyStore of an empty store read %d records of a %d-key catalog", n, others)
	}
}

func ptr32(v int32) *int32 { return &v }
