package kms

import (
	"context"
	"encoding/base64"

	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// defaultStoreLimit is the page size of DescribeCustomKeyStores without
// Limit (undocumented by AWS; spec §5.3 recommends 100).
const defaultStoreLimit = 100

// DescribeCustomKeyStores lists the caller's stores in creation order, or
// the one named by id or name (spec §5.3), as the database has them.
// Markers are opaque: the id of the last store of the previous page.
func (s *Service) DescribeCustomKeyStores(ctx context.Context, c *Caller, in *kmsapi.DescribeCustomKeyStoresRequest) (*kmsapi.DescribeCustomKeyStoresResponse, error) {
	if err := s.storeAuthorize(c, "DescribeCustomKeyStores"); err != nil {
		return nil, err
	}
	m, err := s.keyStores()
	if err != nil {
		return nil, err
	}
	if in.CustomKeyStoreId != nil && in.CustomKeyStoreName != nil {
		return nil, validation("Specify either CustomKeyStoreId or CustomKeyStoreName, not both.")
	}
	// Read from the database, not this node's cache: a store made through
	// another node a moment ago is found at once (as Connect, Update and
	// Delete find it), and every node lists the same stores.
	all, err := m.ListFresh(ctx, c.Account, c.Region)
	if err != nil {
		return nil, err
	}
	var stores []*keystore.Store
	for _, st := range all {
		if (in.CustomKeyStoreId == nil || st.ID == *in.CustomKeyStoreId) &&
			(in.CustomKeyStoreName == nil || st.Name == *in.CustomKeyStoreName) {
			stores = append(stores, st)
		}
	}
	if len(stores) == 0 && (in.CustomKeyStoreId != nil || in.CustomKeyStoreName != nil) {
		return nil, storeErr(keystore.ErrNotFound)
	}
	if in.Marker != nil {
		after, err := base64.RawURLEncoding.DecodeString(*in.Marker)
		i := -1
		if err == nil {
			for j, st := range stores {
				if st.ID == string(after) {
					i = j
				}
			}
		}
		if i < 0 {
			return nil, exc("InvalidMarkerException", "The marker is not valid.")
		}
		stores = stores[i+1:]
	}
	limit := defaultStoreLimit
	if in.Limit != nil {
		limit = int(*in.Limit)
	}
	out := &kmsapi.DescribeCustomKeyStoresResponse{CustomKeyStores: []kmsapi.CustomKeyStoresListEntry{}}
	truncated := len(stores) > limit
	if truncated {
		stores = stores[:limit]
		next := base64.RawURLEncoding.EncodeToString([]byte(stores[limit-1].ID))
		out.NextMarker = &next
	}
	out.Truncated = &truncated
	for _, st := range stores {
		out.CustomKeyStores = append(out.CustomKeyStores, storeEntry(st))
	}
	return out, nil
}

// storeEntry is a store as DescribeCustomKeyStores shows it: never its
// password; the error code only while FAILED.
func storeEntry(st *keystore.Store) kmsapi.CustomKeyStoresListEntry {
	e := kmsapi.CustomKeyStoresListEntry{
		CustomKeyStoreId:   ptr(st.ID),
		CustomKeyStoreName: ptr(st.Name),
		CustomKeyStoreType: ptr(st.Type),
		ConnectionState:    ptr(string(st.State)),
		CreationDate:       kmsapi.NewTime(st.Created),
	}
	if st.State == keystore.Failed && st.ErrorCode != "" {
		e.ConnectionErrorCode = ptr(st.ErrorCode)
	}
	if st.Type == keystore.TypeCloudHSM {
		e.CloudHsmClusterId, e.TrustAnchorCertificate = ptr(st.ClusterID), ptr(st.TrustAnchor)
	}
	if st.XKS != nil {
		e.XksProxyConfiguration = xksEntry(st.XKS)
	}
	return e
}

func ptr[T any](v T) *T { return &v }
