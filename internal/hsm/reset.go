package hsm

import "context"

// Purge readies the service for a reset of kmsd's emulator (POST
// /_kmsd/reset), after which a new Service opens a store without these
// clusters: it stops the background steps, deletes the tokens of the HSMs
// of every cluster kmsd made, and returns the ids of the declared
// clusters, whose tokens belong to their operator and whose records (with
// the crypto user's current password) a reset keeps. Close still follows.
func (s *Service) Purge(ctx context.Context) (declared []string) {
	s.cancel()
	s.wg.Wait()
	s.mu.RLock()
	recs := make([]*record, 0, len(s.clusters))
	for _, r := range s.clusters {
		recs = append(recs, r)
	}
	s.mu.RUnlock()
	for _, r := range recs {
		if r.Declared {
			declared = append(declared, r.ID)
			continue
		}
		if len(r.HSMs) == 0 {
			continue
		}
		toks, err := s.tokensFor(r)
		if err != nil {
			s.log.Warn("hsm: reset: no module to delete the cluster's tokens", "cluster", r.ID, "err", err)
			continue
		}
		for i := range r.HSMs {
			if err := toks.DeleteToken(ctx, r.HSMs[i].label()); err != nil {
				s.log.Warn("hsm: reset: delete token", "cluster", r.ID, "hsm", r.HSMs[i].ID, "err", err)
			}
		}
	}
	return declared
}

// RecordPrefix is the storage key of cluster id's record.
func RecordPrefix(id string) string { return recordPath(id) }

// CryptoUserPassword returns the current password of declared cluster
// id's crypto user as kmsd keeps it — kmsd rotates it as a key store
// connects — so that a seed file's key store over the cluster, made anew
// after a reset, is given the password the tokens have rather than the
// file's first one.
func (s *Service) CryptoUserPassword(account, region, id string) (string, bool) {
	ctx, cancel := s.readCtx()
	defer cancel()
	r, ok, err := s.get(ctx, Caller{Account: account, Region: region}, id)
	if err != nil || !ok || !r.Declared {
		return "", false
	}
	u := r.cryptoUser()
	if u == nil {
		return "", false
	}
	pw, err := s.open(userPath(r.ID, u.Name), u.Password)
	if err != nil {
		return "", false
	}
	defer clear(pw)
	return string(pw), true
}
