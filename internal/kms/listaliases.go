package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// ListAliases lists the aliases of the caller's account and region — its
// own and the predefined AWS managed ones (awsManagedAliases), merged in
// name order — or the aliases of one key, which never include predefined
// ones; the marker is the last alias name returned.
func (s *Service) ListAliases(ctx context.Context, c *Caller, in *kmsapi.ListAliasesRequest) (*kmsapi.ListAliasesResponse, error) {
	limit := pageLimit(in.Limit, 100)
	if err := s.authorizeIAM(c, "kms:ListAliases", nil); err != nil {
		return nil, err
	}
	var keyID string
	if in.KeyId != nil {
		k, err := s.resolveKeyID(ctx, c, *in.KeyId)
		if err != nil {
			return nil, err
		}
		keyID = k.ID
	}
	all, err := s.cat.ListAliases(ctx, c.Account, c.Region)
	if err != nil {
		return nil, internal(err)
	}
	var predefined []string
	if keyID == "" {
		predefined = awsManagedAliases
	}
	out := &kmsapi.ListAliasesResponse{Aliases: []kmsapi.AliasListEntry{}, Truncated: kmsapi.Bool(false)}
	after := derefStr(in.Marker)
	for e := range mergeAliases(all, predefined) {
		name := e.name()
		if (keyID != "" && (e.alias == nil || e.alias.KeyID != keyID)) || (after != "" && name <= after) {
			continue
		}
		if len(out.Aliases) == limit {
			out.Truncated = kmsapi.Bool(true)
			out.NextMarker = out.Aliases[limit-1].AliasName
			break
		}
		entry := kmsapi.AliasListEntry{
			AliasName: kmsapi.String(name),
			AliasArn:  kmsapi.String(keys.AliasARN(c.Region, c.Account, name)),
		}
		if a := e.alias; a != nil {
			entry.TargetKeyId = kmsapi.String(a.KeyID)
			entry.CreationDate = kmsapi.NewTime(a.Created)
			entry.LastUpdatedDate = kmsapi.NewTime(a.Updated)
		}
		out.Aliases = append(out.Aliases, entry)
	}
	return out, nil
}

// aliasEntry is one alias of a ListAliases answer: a stored alias, or
// (alias nil) a predefined AWS managed alias.
type aliasEntry struct {
	alias      *catalog.Alias
	predefined string
}

func (e aliasEntry) name() string {
	if e.alias != nil {
		return e.alias.Name
	}
	return e.predefined
}

// mergeAliases yields stored (in name order) and predefined (sorted)
// aliases merged in name order; a stored alias hides a predefined one of
// the same name.
func mergeAliases(stored []*catalog.Alias, predefined []string) func(yield func(aliasEntry) bool) {
	return func(yield func(aliasEntry) bool) {
		i, j := 0, 0
		for i < len(stored) || j < len(predefined) {
			var e aliasEntry
			switch {
			case j == len(predefined) || (i < len(stored) && stored[i].Name <= predefined[j]):
				if j < len(predefined) && stored[i].Name == predefined[j] {
					j++
				}
				e = aliasEntry{alias: stored[i]}
				i++
			default:
				e = aliasEntry{predefined: predefined[j]}
				j++
			}
			if !yield(e) {
				return
			}
		}
	}
}
