package catalog

import (
	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/kmsd/kmsd/internal/policy"
)

// policyTextLimit bounds how many distinct key policy texts a catalog
// shares among the key records it reads (at most 32 KiB each), and how
// many accounts' default policies it keeps.
const policyTextLimit = 256

// policyTexts keeps one copy of each recently read key policy text. Most
// keys of an account carry the same policy (the default one, or one their
// owner applies to many keys), and a record decoded from the database
// otherwise holds a copy of its own: with the default policy (269 bytes)
// sharing it took a cached key from 2,154 to 1,866 bytes of heap
// (TestCacheMemoryPerKey); a longer custom policy saves its whole size
// per key. The default policy of each account is also kept by account, for
// the records stored without it (record.go); it is made through share, so
// records holding the text inline (written by older kmsd) share it too.
type policyTexts struct {
	c        *lru.Cache[string, string]
	defaults *lru.Cache[string, string] // account → its default policy, a text of c
}

func newPolicyTexts() policyTexts {
	return policyTexts{
		c:        mustLRU[string, string](policyTextLimit, nil),
		defaults: mustLRU[string, string](policyTextLimit, nil),
	}
}

// share returns the kept copy of text, keeping text if none is kept.
func (p *policyTexts) share(text string) string {
	if kept, ok := p.c.Get(text); ok {
		return kept
	}
	p.c.Add(text, text)
	return text
}

// defaultPolicy is policy.DefaultKeyPolicy(account), the kept copy; a
// new one when p is nil.
func (p *policyTexts) defaultPolicy(account string) string {
	if p == nil {
		return policy.DefaultKeyPolicy(account)
	}
	if text, ok := p.defaults.Get(account); ok {
		return text
	}
	text := p.share(policy.DefaultKeyPolicy(account))
	p.defaults.Add(account, text)
	return text
}
