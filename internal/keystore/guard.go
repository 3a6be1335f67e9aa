package keystore

import "context"

// GuardCluster is the hsm.StoreGuard of the CloudHSM key stores: it calls
// fn with the store backed by cluster clusterID that is CONNECTED or
// CONNECTING ("" when none) and its state. fn runs under the manager's
// write lock, which every state change takes, so no store of the cluster
// can become CONNECTING between the check and what fn does (a cluster's
// deletion). fn must not call back into the Manager.
func (m *Manager) GuardCluster(ctx context.Context, clusterID string, fn func(storeID, state string) error) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	id, state := "", State("")
	m.mu.RLock()
	for _, st := range m.stores {
		if st.Type == TypeCloudHSM && st.ClusterID == clusterID && (st.State == Connected || st.State == Connecting) {
			id, state = st.ID, st.State
			break
		}
	}
	m.mu.RUnlock()
	return fn(id, string(state))
}
