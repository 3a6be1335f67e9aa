package catalog

import (
	"context"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/storage"
)

// listHook is a store whose List calls after, if set, once the read is
// made and before it returns: a change noted by the catalog while a
// preload's page is on its way.
type listHook struct {
	storage.Store
	after func(prefix string, got []storage.Entry)
}

func (s *listHook) List(ctx context.Context, prefix, after string, limit int) ([]storage.Entry, error) {
	es, err := s.Store.List(ctx, prefix, after, limit)
	if err == nil && s.after != nil {
		s.after(prefix, es)
	}
	return es, err
}

// TestPreload: Preload fills the cache with key records and their AES-GCM
// instances up to the cache size and no further, leaves a key a request
// cached as it is, and does not install a record whose path was written
// or invalidated while its page was read, nor anything after a Reset
// meanwhile; a full cache takes nothing.
func TestPreload(t *testing.T) {
	ctx := context.Background()
	base := newCatalog(t)
	ids := makeKeys(t, base, 1200)
	hook := &listHook{Store: base.store}
	c := New(hook, base.barrier)
	c.SetCacheSize(1000)

	first := readKey(t, c, ids[0]) // a request's
	var changed string
	hook.after = func(prefix string, got []storage.Entry) {
		if prefix != "key/" || changed != "" {
			return
		}
		// A write of the page's tenth key, seen (as the feed or the
		// writer does) after the page was read.
		changed = strings.TrimPrefix(got[10].Key, "key/")
		c.invalidate([]string{got[10].Key})
	}
	n, err := c.Preload(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 999 {
		t.Errorf("preloaded %d keys, want 999 (the cache's 1,000 less the one cached)", n)
	}
	if k, _, _ := c.CacheLen(); k != 1000 {
		t.Errorf("%d keys cached, want 1000", k)
	}
	c.mu.RLock()
	got, _ := c.keys.Peek(ids[0])
	_, stale := c.keys.Peek(changed)
	_, set, _ := c.keys.Extra(ids[500])
	withAEAD := set.find(1) != nil
	c.mu.RUnlock()
	if got != first {
		t.Error("the preload replaced a record a request had cached")
	}
	if stale {
		t.Errorf("the preload installed %s, changed while its page was read", changed)
	}
	if !withAEAD {
		t.Errorf("no AES-GCM instance of preloaded key %s", ids[500])
	}
	for _, id := range []string{ids[500], ids[998], changed} {
		readKey(t, c, id)
	}
	if n, err := c.Preload(ctx); n != 0 || err != nil {
		t.Errorf("a preload into a full cache: %d, %v", n, err)
	}

	// A Reset while the first page is read: nothing of it is installed;
	// the next pages are.
	c.reset()
	c.SetCacheSize(2000)
	resets := 0
	hook.after = func(prefix string, _ []storage.Entry) {
		if prefix == "key/" && resets == 0 {
			resets++
			c.reset()
		}
	}
	n, err = c.Preload(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := 1200 - preloadPage; n != want {
		t.Errorf("preloaded %d keys with a reset during the first page, want %d", n, want)
	}
	c.mu.RLock()
	_, firstPage := c.keys.Peek(ids[0])
	c.mu.RUnlock()
	if firstPage {
		t.Error("a record read before a Reset was installed")
	}

	// A preload stops when its context ends.
	c.reset()
	cctx, cancel := context.WithCancel(ctx)
	hook.after = func(string, []storage.Entry) { cancel() }
	if n, err := c.Preload(cctx); err == nil || n > preloadPage {
		t.Errorf("a canceled preload: %d, %v", n, err)
	}
}
