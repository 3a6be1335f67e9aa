package server

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/storage"
)

// stallStore is a store whose reads, once stalled, wait until their
// context ends: a database that no longer answers.
type stallStore struct {
	storage.Store
	stalled atomic.Bool
}

func (s *stallStore) Get(ctx context.Context, key string) ([]byte, error) {
	if s.stalled.Load() {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.Store.Get(ctx, key)
}

// TestDependencyTimeout: a node whose cache is older than its staleness
// bound reads the database, at most for a second; when the database does
// not answer in that time the caller gets AWS's DependencyTimeoutException
// (HTTP 503, which clients retry) from an operation whose model lists it,
// and KMSInternalException (500) from one that does not (GenerateMac).
func TestDependencyTimeout(t *testing.T) {
	var st *stallStore
	a, cat := newTestAPIWrap(t, func(s storage.Store) storage.Store {
		st = &stallStore{Store: s}
		return st
	})
	var asOf atomic.Int64 // the feed's instant, unix nanoseconds
	asOf.Store(time.Now().Add(time.Hour).UnixNano())
	cat.SetFreshness(func() time.Time { return time.Unix(0, asOf.Load()) }, time.Second)

	create := func(body string) string {
		t.Helper()
		status, _, b := a.raw(t, "CreateKey", body)
		var out struct{ KeyMetadata struct{ KeyId string } }
		if err := json.Unmarshal(b, &out); status != 200 || err != nil || out.KeyMetadata.KeyId == "" {
			t.Fatalf("CreateKey %s: %d %s", body, status, b)
		}
		return out.KeyMetadata.KeyId
	}
	sym := create(`{}`)
	hmac := create(`{"KeySpec":"HMAC_256","KeyUsage":"GENERATE_VERIFY_MAC"}`)
	encrypt := `{"KeyId":"` + sym + `","Plaintext":"aGVsbG8="}`
	mac := `{"KeyId":"` + hmac + `","MacAlgorithm":"HMAC_SHA_256","Message":"aGVsbG8="}`
	for _, c := range [][2]string{{"Encrypt", encrypt}, {"GenerateMac", mac}} {
		if status, _, b := a.raw(t, c[0], c[1]); status != 200 {
			t.Fatalf("%s with a fresh cache: %d %s", c[0], status, b)
		}
	}

	// The feed stops (its instant is now past the bound) and the
	// database stalls.
	asOf.Store(time.Now().Add(-time.Minute).UnixNano())
	st.stalled.Store(true)
	for _, c := range []struct {
		op, body, want string
		status         int
	}{
		{"Encrypt", encrypt, "DependencyTimeoutException", 503},
		{"GenerateMac", mac, "KMSInternalException", 500},
	} {
		status, _, b := a.raw(t, c.op, c.body)
		var e struct {
			Type    string `json:"__type"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal(b, &e); err != nil || status != c.status || e.Type != c.want {
			t.Errorf("%s with a stale cache and a stalled database: %d %s, want %d %s", c.op, status, b, c.status, c.want)
		}
		if c.want == "DependencyTimeoutException" && e.Message != "The system timed out while trying to fulfill the request. You can retry the request." {
			t.Errorf("%s: message %q", c.op, e.Message)
		}
	}

	// The database answers again: so does the node, from the database
	// until its feed catches up.
	st.stalled.Store(false)
	if status, _, b := a.raw(t, "Encrypt", encrypt); status != 200 {
		t.Errorf("Encrypt once the database answers: %d %s", status, b)
	}
}
