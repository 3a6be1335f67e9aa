package hsm

import "context"

// StoreGuard lets the key store layer above protect the clusters its
// custom key stores use, without this package knowing about key stores.
// It calls fn with the store backed by cluster clusterID that is CONNECTED
// or CONNECTING (storeID "" when there is none) and its state, and keeps
// every store of the cluster from starting to connect until fn returns,
// so that what fn decides from the state stays true while it acts.
type StoreGuard func(ctx context.Context, clusterID string, fn func(storeID, state string) error) error

// SetStoreGuard installs g, which DeleteCluster and DeleteHsm consult: a
// cluster, or its last HSM, is not deleted while a custom key store using
// the cluster is CONNECTED or CONNECTING. Call it before serving requests.
func (s *Service) SetStoreGuard(g StoreGuard) {
	s.mu.Lock()
	s.guard = g
	s.mu.Unlock()
}

// guarded runs fn under the store guard, or with no store when there is
// no guard.
func (s *Service) guarded(ctx context.Context, clusterID string, fn func(storeID, state string) error) error {
	s.mu.RLock()
	g := s.guard
	s.mu.RUnlock()
	if g == nil {
		return fn("", "")
	}
	return g(ctx, clusterID, fn)
}

// storeBusy is the refusal to delete what a connected store needs.
func storeBusy(clusterID, storeID, state, hsmID string) error {
	if hsmID != "" {
		return invalid("HSM %s is the last HSM of cluster %s, the backing cluster of custom key store %s, which is %s. "+
			"Disconnect the custom key store before deleting the cluster's last HSM.", hsmID, clusterID, storeID, state)
	}
	return invalid("Cluster %s is the backing cluster of custom key store %s, which is %s. "+
		"Disconnect the custom key store before deleting the cluster.", clusterID, storeID, state)
}

// ResourceTags returns the tags of c's cluster or backup id, for the aws:ResourceTag
// condition keys; nil when there is none (or the cluster is deleted).
func (s *Service) ResourceTags(c Caller, id string) map[string]string {
	ctx, cancel := s.readCtx()
	defer cancel()
	tags, err := s.tagsOf(ctx, c, id)
	if err != nil || len(tags) == 0 {
		return nil
	}
	out := make(map[string]string, len(tags))
	for _, t := range tags {
		out[t.Key] = t.Value
	}
	return out
}
