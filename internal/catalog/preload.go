package catalog

import (
	"context"
	"fmt"
	"strings"

	"github.com/kmsd/kmsd/internal/keys"
)

// preloadPage is how many key records Preload reads a statement.
const preloadPage = 500

// Preload reads key records into the cache, in name order, until the
// cache holds as many keys as its size (SetCacheSize) or every key is
// read, and makes the AES-GCM instance of each symmetric key's current
// version held by kmsd, as a first Encrypt would. It returns how many
// records it cached.
//
// It is for a node whose cache is sized to hold its store's keys
// (kmsd's --cache-preload): the first use of a key then costs no
// database read, no decode and no unsealing, as on a store whose keys
// all fit and have all been used. It runs beside requests, which keep
// the cache as usual: a key a request cached first is left as it is, a
// cache already full takes nothing more (so a preload never evicts a key
// in use), and a record is installed only if nothing wrote or
// invalidated its path since the read began — the generation rule of
// fill, with the generation counter at the start of each page as the
// mark: any change noted later carries a higher generation.
//
// Records that do not decode are skipped (a read of that key reports
// them). ctx ends it early.
func (c *Catalog) Preload(ctx context.Context) (int, error) {
	cached, after := 0, ""
	for {
		c.mu.RLock()
		room := c.cacheSize - c.keys.Len()
		mark := c.gens.seq
		c.mu.RUnlock()
		if room <= 0 {
			return cached, nil
		}
		entries, err := c.store.List(ctx, "key/", after, preloadPage)
		if err != nil {
			return cached, fmt.Errorf("catalog: preload keys: %w", err)
		}
		got := make([]*Key, 0, len(entries))
		for _, e := range entries {
			k, err := decodeKey(e.Value, &c.policies)
			if err != nil {
				k = nil
			}
			got = append(got, k)
		}
		var installed []*Key
		c.mu.Lock()
		for i, k := range got {
			if k == nil || c.keys.Len() >= c.cacheSize {
				continue
			}
			name := strings.TrimPrefix(entries[i].Key, "key/")
			if c.keys.Contains(name) || c.stampLocked(entries[i].Key) > mark {
				continue
			}
			c.putKey(name, k)
			installed = append(installed, k)
		}
		c.mu.Unlock()
		for _, k := range installed {
			if k.KeySpec == keys.Symmetric && k.XksKeyID == "" && k.CustomKeyStoreID == "" {
				// Kept beside the record only if it is still the cached
				// one (AEAD); an error leaves it to the first use.
				_, _ = c.AEAD(k, k.Current)
			}
		}
		cached += len(installed)
		if len(entries) < preloadPage || ctx.Err() != nil {
			return cached, ctx.Err()
		}
		after = entries[len(entries)-1].Key
	}
}
