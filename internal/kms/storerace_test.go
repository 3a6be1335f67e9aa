package kms

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/postgres"
	"github.com/kmsd/kmsd/internal/storage/postgres/pgtest"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// TestMain stops the private PostgreSQL server pgtest started, if any.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// storeNode is one kmsd node of a test: a Service with its own catalog and
// key store manager on its own handle of a database other nodes share,
// each with its own caches and no change feed — what another node changed
// reaches it only through reads of the database.
type storeNode struct {
	svc *Service
	cat *catalog.Catalog
	m   *keystore.Manager
}

// sharedDrivers opens two handles on one new database of each driver.
var sharedDrivers = []struct {
	name string
	open func(t *testing.T) (a, b storage.Store)
}{
	{"sqlite", func(t *testing.T) (a, b storage.Store) {
		path := filepath.Join(t.TempDir(), "kmsd.db")
		open := func() storage.Store {
			st, err := sqlite.Open(t.Context(), path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		}
		return open(), open()
	}},
	{"postgres", func(t *testing.T) (a, b storage.Store) {
		u := pgtest.URL(t)
		open := func() storage.Store {
			st, err := postgres.Open(t.Context(), u, postgres.Options{MaxConns: 8})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		}
		return open(), open()
	}},
}

// newStoreNode is a node on db (its catalog on cdb, the same database,
// when not nil), with the HSM h every node reaches.
func newStoreNode(t *testing.T, db, cdb storage.Store, b *barrier.Barrier, h *fakeHSM) *storeNode {
	return newStoreNodeXKS(t, db, cdb, b, h, nil)
}

// newStoreNodeXKS is newStoreNode whose external key stores reach their
// proxies through ext (none when nil).
func newStoreNodeXKS(t *testing.T, db, cdb storage.Store, b *barrier.Barrier, h *fakeHSM, ext *keystore.External) *storeNode {
	t.Helper()
	if cdb == nil {
		cdb = db
	}
	backings := map[string]keystore.Backing{keystore.TypeCloudHSM: &fakeBacking{}}
	if ext != nil {
		backings[keystore.TypeExternal] = ext
	}
	m, err := keystore.New(t.Context(), db, b, keystore.Config{Backings: backings, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	cat := catalog.New(cdb, b)
	if err := cat.InitStoreIndex(t.Context()); err != nil {
		t.Fatal(err)
	}
	svc := New(cat)
	t.Cleanup(svc.Close)
	svc.SetKeyStores(m, &fakeClusters{}, h)
	if ext != nil {
		svc.SetExternal(ext)
	}
	return &storeNode{svc: svc, cat: cat, m: m}
}

// newBarrier is a barrier under a fresh random root key.
func newBarrier(t *testing.T) *barrier.Barrier {
	t.Helper()
	root := make([]byte, 32)
	rand.Read(root)
	b, err := barrier.New(root)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var raceCaller = &Caller{Account: "111122223333", Region: "us-east-1", ARN: "arn:aws:iam::111122223333:root"}

func (n *storeNode) createStore(t *testing.T, name string) string {
	t.Helper()
	out, err := n.svc.CreateCustomKeyStore(t.Context(), raceCaller, &kmsapi.CreateCustomKeyStoreRequest{
		CustomKeyStoreName: str(name), CloudHsmClusterId: str("cluster-" + name), TrustAnchorCertificate: str("anchor"),
		KeyStorePassword: str("kmsPswd1")})
	if err != nil {
		t.Fatal(err)
	}
	return *out.CustomKeyStoreId
}

func (n *storeNode) connect(t *testing.T, id string) {
	t.Helper()
	if _, err := n.svc.ConnectCustomKeyStore(t.Context(), raceCaller, &kmsapi.ConnectCustomKeyStoreRequest{CustomKeyStoreId: &id}); err != nil {
		t.Fatal(err)
	}
	n.m.Wait()
	n.wantState(t, id, keystore.Connected)
}

func (n *storeNode) disconnect(t *testing.T, id string) {
	t.Helper()
	if _, err := n.svc.DisconnectCustomKeyStore(t.Context(), raceCaller, &kmsapi.DisconnectCustomKeyStoreRequest{CustomKeyStoreId: &id}); err != nil {
		t.Fatal(err)
	}
	n.m.Wait()
	n.wantState(t, id, keystore.Disconnected)
}

func (n *storeNode) delete(id string) error {
	_, err := n.svc.DeleteCustomKeyStore(context.Background(), raceCaller, &kmsapi.DeleteCustomKeyStoreRequest{CustomKeyStoreId: &id})
	return err
}

// wantState fails t unless store id is in state as the database has it.
func (n *storeNode) wantState(t *testing.T, id string, state keystore.State) {
	t.Helper()
	st, err := n.m.GetFresh(t.Context(), raceCaller.Account, raceCaller.Region, id)
	if err != nil || st.State != state {
		t.Fatalf("store %s: %v, %v; want %s", id, st, err, state)
	}
}

func (n *storeNode) createKey(id string) (*kmsapi.CreateKeyResponse, error) {
	origin := "AWS_CLOUDHSM"
	return n.svc.CreateKey(context.Background(), raceCaller, &kmsapi.CreateKeyRequest{Origin: &origin, CustomKeyStoreId: &id})
}

// keysIn returns the ids of the key records, read from the database,
// that name custom key store id.
func keysIn(t *testing.T, db storage.Store, b *barrier.Barrier, id string) []string {
	t.Helper()
	var out []string
	if err := catalog.New(db, b).AllKeys(t.Context(), func(k *catalog.Key) error {
		if k.CustomKeyStoreID == id {
			out = append(out, k.ID)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCreateKeyChecksStoreInDatabase (issue #16, gap 1): a CreateKey in a
// CloudHSM key store through node B decides on the store as the database
// has it, in the transaction that writes the key — not on B's cached
// copy — so a store disconnected or deleted through node A a moment
// before (here: while B makes the key's material in the cluster) gets no
// key, the caller gets the store's exception, and the material made is
// deleted from the cluster.
func TestCreateKeyChecksStoreInDatabase(t *testing.T) {
	for _, d := range sharedDrivers {
		t.Run(d.name, func(t *testing.T) {
			da, db := d.open(t)
			b := newBarrier(t)
			h := &fakeHSM{keys: map[string]cipher.AEAD{}}
			a, n := newStoreNode(t, da, nil, b, h), newStoreNode(t, db, nil, b, h)
			id := a.createStore(t, "gap1")
			a.connect(t, id)
			n.wantState(t, id, keystore.Connected) // B's cache: CONNECTED

			// Disconnected through A after B's check, before B's write.
			h.made = func() { h.made = nil; a.disconnect(t, id) }
			_, err := n.createKey(id)
			wantException(t, err, "CustomKeyStoreInvalidStateException")
			if ks := keysIn(t, da, b, id); len(ks) != 0 || len(h.keys) != 0 {
				t.Fatalf("disconnected store: keys %v, HSM keys %d; want none", ks, len(h.keys))
			}

			// B's cache still says CONNECTED; the database does not.
			if st, err := n.m.Get(raceCaller.Account, raceCaller.Region, id); err != nil || st.State != keystore.Connected {
				t.Fatalf("B's cached store: %v %v; the test needs it stale (CONNECTED)", st, err)
			}
			_, err = n.createKey(id)
			wantException(t, err, "CustomKeyStoreInvalidStateException")

			// Connected again, then deleted through A while B makes the key.
			a.connect(t, id)
			n.wantState(t, id, keystore.Connected)
			h.made = func() {
				h.made = nil
				a.disconnect(t, id)
				if err := a.delete(id); err != nil {
					t.Errorf("delete through A: %v", err)
				}
			}
			_, err = n.createKey(id)
			wantException(t, err, "CustomKeyStoreNotFoundException")
			if ks := keysIn(t, da, b, id); len(ks) != 0 || len(h.keys) != 0 {
				t.Fatalf("deleted store: keys %v, HSM keys %d; want none", ks, len(h.keys))
			}

			// Unhindered, B creates the key in a store A connected.
			id = a.createStore(t, "gap1-ok")
			a.connect(t, id)
			if _, err := n.createKey(id); err != nil {
				t.Fatal(err)
			}
			if ks := keysIn(t, da, b, id); len(ks) != 1 || len(h.keys) != 1 {
				t.Fatalf("connected store: keys %v, HSM keys %d; want 1", ks, len(h.keys))
			}
		})
	}
}

// TestCreateExternalKeyChecksStoreInDatabase is TestCreateKeyChecksStoreInDatabase
// for an external key store, with the real XKS proxy handler over HTTPS:
// the store is disconnected through node A while node B's CreateKey asks
// the proxy about the external key, after B's check of the store; B's
// write of the key then finds the store DISCONNECTED.
func TestCreateExternalKeyChecksStoreInDatabase(t *testing.T) {
	proxy := xksProxy(t, map[string][]byte{"ext": nil})
	// asked runs (once) when the proxy is asked for a key's metadata,
	// before it answers.
	var asked atomic.Pointer[func()]
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/metadata") {
			if f := asked.Swap(nil); f != nil {
				(*f)()
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	ext := &keystore.External{CABundle: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}),
		Timeout: 5 * time.Second}

	for _, d := range sharedDrivers {
		t.Run(d.name, func(t *testing.T) {
			da, db := d.open(t)
			b := newBarrier(t)
			a := newStoreNodeXKS(t, da, nil, b, nil, ext)
			n := newStoreNodeXKS(t, db, nil, b, nil, ext)
			cs, err := a.svc.CreateCustomKeyStore(t.Context(), raceCaller, xksReq("xks-"+d.name, keystore.XKSPublic, "https://"+srv.Listener.Addr().String(), ""))
			if err != nil {
				t.Fatal(err)
			}
			id := *cs.CustomKeyStoreId
			a.connect(t, id)
			n.wantState(t, id, keystore.Connected)
			createExt := func() error {
				_, err := n.svc.CreateKey(context.Background(), raceCaller, &kmsapi.CreateKeyRequest{Origin: str("EXTERNAL_KEY_STORE"),
					CustomKeyStoreId: &id, XksKeyId: str("ext")})
				return err
			}

			var hookErr error
			disconnect := func() {
				_, hookErr = a.svc.DisconnectCustomKeyStore(context.Background(), raceCaller, &kmsapi.DisconnectCustomKeyStoreRequest{CustomKeyStoreId: &id})
				a.m.Wait()
			}
			asked.Store(&disconnect)
			err = createExt()
			if hookErr != nil {
				t.Fatalf("disconnect through A: %v", hookErr)
			}
			a.wantState(t, id, keystore.Disconnected)
			wantException(t, err, "CustomKeyStoreInvalidStateException")
			if ks := keysIn(t, da, b, id); len(ks) != 0 {
				t.Fatalf("disconnected store: keys %v; want none", ks)
			}

			// Connected again and unhindered, B creates the key.
			a.connect(t, id)
			if err := createExt(); err != nil {
				t.Fatal(err)
			}
			if ks := keysIn(t, da, b, id); len(ks) != 1 {
				t.Fatalf("connected store: keys %v; want 1", ks)
			}
		})
	}
}

// listHook is a storage handle that calls hook once, after the first
// List (outside a transaction) of keys starting with prefix has read them.
type listHook struct {
	storage.Store
	prefix string
	once   sync.Once
	hook   func()
}

func (l *listHook) List(ctx context.Context, prefix, after string, limit int) ([]storage.Entry, error) {
	es, err := l.Store.List(ctx, prefix, after, limit)
	if strings.HasPrefix(prefix, l.prefix) {
		l.once.Do(l.hook)
	}
	return es, err
}

// TestDeleteCustomKeyStoreChecksKeysInTransaction (issue #16, gap 2):
// DeleteCustomKeyStore through node A counts the store's keys again in
// the transaction that deletes it. Here, after A's first count found
// none, node B connects the store, creates a key in it and disconnects
// it: A's delete then answers CustomKeyStoreHasCMKsException and the
// store stays. Then both race for real, a round at a time: whatever
// wins, never a key whose store is deleted.
func TestDeleteCustomKeyStoreChecksKeysInTransaction(t *testing.T) {
	for _, d := range sharedDrivers {
		t.Run(d.name, func(t *testing.T) {
			da, db := d.open(t)
			b := newBarrier(t)
			h := &fakeHSM{keys: map[string]cipher.AEAD{}}
			hooked := &listHook{Store: da}
			a, n := newStoreNode(t, da, hooked, b, h), newStoreNode(t, db, nil, b, h)
			id := a.createStore(t, "gap2")
			hooked.prefix = "storekey/" + id + "/"
			hooked.hook = func() {
				n.connect(t, id)
				if _, err := n.createKey(id); err != nil {
					t.Errorf("create through B: %v", err)
				}
				n.disconnect(t, id)
			}
			wantException(t, a.delete(id), "CustomKeyStoreHasCMKsException")
			a.wantState(t, id, keystore.Disconnected)
			if ks := keysIn(t, da, b, id); len(ks) != 1 {
				t.Fatalf("keys of the store: %v; want B's one", ks)
			}

			// The race, for real: B creates keys while A disconnects and
			// deletes the store.
			rounds := 10
			deleted, refused := 0, 0
			for r := range rounds {
				id := a.createStore(t, fmt.Sprintf("race-%d", r))
				a.connect(t, id)
				n.wantState(t, id, keystore.Connected)
				var wg sync.WaitGroup
				wg.Go(func() {
					time.Sleep(time.Duration(r) * time.Millisecond)
					n.createKey(id) // fails once the store is disconnected
				})
				a.disconnect(t, id)
				err := a.delete(id)
				wg.Wait()
				ks := keysIn(t, da, b, id)
				var e *kmsapi.Exception
				switch {
				case err == nil:
					deleted++
					if len(ks) != 0 {
						t.Fatalf("round %d: store %s deleted with keys %v", r, id, ks)
					}
				case errors.As(err, &e) && e.Name == "CustomKeyStoreHasCMKsException":
					refused++
					if len(ks) == 0 {
						t.Fatalf("round %d: delete refused, no keys", r)
					}
				default:
					t.Fatalf("round %d: delete: %v", r, err)
				}
			}
			t.Logf("%d rounds: %d stores deleted with no keys, %d refused with keys", rounds, deleted, refused)
		})
	}
}
