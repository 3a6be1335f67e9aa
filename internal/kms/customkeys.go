package kms

import (
	"context"
	"errors"
	"fmt"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/hsm"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// HSMKeys is the cryptography of keys in CloudHSM key stores: AES-256-GCM
// keys living in the store's cluster, labelled with the KMS key ARN
// (*hsm.Service).
type HSMKeys interface {
	CreateKey(ctx context.Context, clusterID, label string) error
	Encrypt(ctx context.Context, clusterID, label string, plaintext, aad []byte) (iv, ciphertext []byte, err error)
	Decrypt(ctx context.Context, clusterID, label string, iv, ciphertext, aad []byte) ([]byte, error)
	GenerateRandom(ctx context.Context, clusterID string, n int) ([]byte, error)
	DeleteKey(ctx context.Context, clusterID, label string) error
}

// deleteBackingKey is the best-effort deletion of a deleted KMS key's
// material from its store's cluster (spec §5.10): it fails quietly (logged)
// when the store is not connected or the cluster refuses. The external key
// of a key in an external key store is never touched (spec §5.10: KMS
// deletes only its own metadata and material).
func (s *Service) deleteBackingKey(ctx context.Context, k *catalog.Key) {
	if k.Origin == keystore.TypeExternal || k.XksKeyID != "" {
		s.log.Info("external key left in the external key store proxy: deleting a KMS key never deletes it",
			"keyId", k.ID, "customKeyStoreId", k.CustomKeyStoreID, "xksKeyId", k.XksKeyID)
		return
	}
	st := s.keyStore(k)
	var why string
	switch {
	case st == nil:
		why = "custom key store not found"
	case s.hsmKeys == nil:
		why = "CloudHSM keys are not available in this kmsd"
	case st.Type != keystore.TypeCloudHSM:
		why = "custom key store of type " + st.Type
	case st.State != keystore.Connected:
		why = "custom key store not connected (" + string(st.State) + ")"
	}
	if why != "" {
		s.log.Info("backing key not deleted: "+why, "keyId", k.ID, "customKeyStoreId", k.CustomKeyStoreID)
		return
	}
	if err := s.hsmKeys.DeleteKey(ctx, st.ClusterID, hsmLabel(k.Region, k.Account, k.ID)); err != nil {
		s.log.Warn("backing key not deleted", "keyId", k.ID, "cluster", st.ClusterID, "err", err)
	}
}

// deleteHSMKey deletes, best effort, the material createStoreKey made in
// store st's cluster for key k, which was not stored after all.
func (s *Service) deleteHSMKey(ctx context.Context, st *keystore.Store, k *catalog.Key) {
	if err := s.hsmKeys.DeleteKey(ctx, st.ClusterID, hsmLabel(k.Region, k.Account, k.ID)); err != nil {
		s.log.Warn("material of a key not created left in its cluster", "keyId", k.ID, "cluster", st.ClusterID, "err", err)
	}
}

// storeRandom is GenerateRandom in custom key store id (spec §5.11).
func (s *Service) storeRandom(ctx context.Context, c *Caller, id string, n int) ([]byte, error) {
	if s.stores == nil {
		return nil, storeErr(keystore.ErrNotFound)
	}
	st, err := s.stores.Get(c.Account, c.Region, id)
	if err != nil {
		return nil, storeErr(err)
	}
	if st.Type != keystore.TypeCloudHSM || s.hsmKeys == nil {
		return nil, exc("UnsupportedOperationException", "GenerateRandom is not supported for custom key store "+id+" of type "+st.Type+".")
	}
	if !st.State.Allows(keystore.OpGenerateRandom) {
		return nil, exc("CustomKeyStoreInvalidStateException", "Custom key store "+id+" is in state "+string(st.State)+"; it must be CONNECTED.")
	}
	if err := s.throttle(st); err != nil {
		return nil, err
	}
	b, err := s.hsmKeys.GenerateRandom(ctx, st.ClusterID, n)
	if err != nil {
		s.log.Warn("kms: CloudHSM GenerateRandom failed", "store", id, "err", err)
		return nil, exc("CustomKeyStoreInvalidStateException", "KMS cannot communicate with the CloudHSM cluster "+st.ClusterID+" of custom key store "+id+".")
	}
	return b, nil
}

// view is k as callers see it: a key of a custom key store that is not
// CONNECTED is Unavailable unless it is pending deletion (spec §7). The
// stored record keeps its own state, which shows again on reconnect. A key
// with imported material past its ValidTo is as the expiry sweep will
// leave it.
func (s *Service) view(k *catalog.Key) *catalog.Key {
	if k.Origin == originExternal {
		return s.expiredView(k)
	}
	if k.CustomKeyStoreID == "" || k.State == keys.PendingDeletion || k.State == keys.Unavailable {
		return k
	}
	if st := s.keyStore(k); st != nil && st.State == keystore.Connected {
		return k
	}
	v := *k
	v.State = keys.Unavailable
	return &v
}

// keyStore returns the store of a custom-store key, nil if it is gone.
func (s *Service) keyStore(k *catalog.Key) *keystore.Store {
	if s.stores == nil {
		return nil
	}
	st, err := s.stores.Get(k.Account, k.Region, k.CustomKeyStoreID)
	if err != nil {
		return nil
	}
	return st
}

// storeMetadata adds the custom key store members to m.
func (s *Service) storeMetadata(k *catalog.Key, m *kmsapi.KeyMetadata) *kmsapi.KeyMetadata {
	if k.CustomKeyStoreID == "" {
		return m
	}
	m.CustomKeyStoreId = kmsapi.String(k.CustomKeyStoreID)
	m.XksKeyConfiguration = xksKeyConfiguration(k)
	if st := s.keyStore(k); st != nil && st.ClusterID != "" {
		m.CloudHsmClusterId = kmsapi.String(st.ClusterID)
	}
	return m
}

// hsmLabel labels a CloudHSM key store key's AES key in its cluster: the
// key's ARN, always in the aws partition as kmsd wrote it before it gave
// the China Regions aws-cn ARNs, so that keys made then keep their label.
func hsmLabel(region, account, id string) string {
	return keys.KeyARNIn("aws", region, account, id)
}

// createStoreKey checks a CreateKey into custom key store id (spec §5.7)
// and makes the key's AES-256 material, labelled label, in the store's
// cluster.
//
// With adopt (a seed file's key of fixed key id), a key the cluster
// holds under the label already is taken as the key's: the same key
// before a reset of the emulator, which leaves the HSMs' keys alone.
//
// It returns the store as read from the database (a control-plane read:
// a store connected or disconnected through another node a moment ago is
// seen as it is), for the check in the transaction that writes the key
// (keystore.CheckCreateKey), and whether it made the material (not an
// adopted key), for the cleanup if that check fails.
func (s *Service) createStoreKey(ctx context.Context, c *Caller, origin string, id *string, label string, adopt bool) (*keystore.Store, bool, error) {
	if id == nil {
		return nil, false, exc("UnsupportedOperationException", "Origin "+origin+" needs a CustomKeyStoreId.")
	}
	if origin != keystore.TypeCloudHSM {
		return nil, false, exc("UnsupportedOperationException", "Origin "+origin+" is not supported by kmsd yet.")
	}
	m, err := s.keyStores()
	if err != nil {
		return nil, false, err
	}
	st, err := m.GetFresh(ctx, c.Account, c.Region, *id)
	if err != nil {
		return nil, false, storeErr(err)
	}
	if st.Type != keystore.TypeCloudHSM {
		return nil, false, exc("UnsupportedOperationException", "Origin "+origin+" does not match custom key store "+st.ID+" of type "+st.Type+".")
	}
	if !st.State.Allows(keystore.OpCreateKey) {
		return nil, false, storeErr(&keystore.StateError{Op: keystore.OpCreateKey, State: st.State, ID: st.ID})
	}
	if _, err := s.clusters.CheckCluster(c.Account, c.Region, st.ClusterID, ""); err != nil {
		if errors.Is(err, keystore.ErrClusterNotFound) || errors.Is(err, keystore.ErrClusterNotActive) {
			// CreateKey checks the HSMs, not the cluster's state (spec §9.1):
			// a DEGRADED cluster is not told to be initialized and activated.
			err = fmt.Errorf("%w: cluster %s has no ACTIVE HSMs in two Availability Zones (%v)", keystore.ErrClusterInvalidConfig, st.ClusterID, err)
		}
		return nil, false, storeErr(err)
	}
	if s.hsmKeys == nil {
		return nil, false, exc("UnsupportedOperationException", "CloudHSM keys are not available in this kmsd.")
	}
	if err := s.hsmKeys.CreateKey(ctx, st.ClusterID, label); err != nil {
		if adopt && errors.Is(err, hsm.ErrKeyExists) {
			return st, false, nil
		}
		return nil, false, s.hsmErr(st, err)
	}
	return st, true, nil
}

// hsmErr is the exception of a failed HSM call of a key operation: the
// cryptographic operations know only KMSInvalidStateException for the
// backing store's problems (spec §5.9); a ciphertext the HSM does not
// authenticate is InvalidCiphertextException.
func (s *Service) hsmErr(st *keystore.Store, err error) error {
	s.log.Warn("kms: CloudHSM key operation failed", "store", st.ID, "cluster", st.ClusterID, "err", err)
	for _, e := range []error{hsm.ErrClusterNotFound, hsm.ErrClusterNotActive, hsm.ErrNoActiveHSM, hsm.ErrUnreachable,
		hsm.ErrUnavailable, hsm.ErrNotLoggedIn} {
		if errors.Is(err, e) {
			return exc("KMSInvalidStateException", "KMS cannot communicate with the CloudHSM cluster "+st.ClusterID+" of custom key store "+st.ID+".")
		}
	}
	if errors.Is(err, hsm.ErrKeyNotFound) {
		return exc("KMSInvalidStateException", "The key material of this KMS key is not in CloudHSM cluster "+st.ClusterID+".")
	}
	return errCiphertext
}

// sealHSM is seal for a key of a CloudHSM key store: the same blob layout,
// with the AES-GCM done in the cluster under the key labelled with its ARN.
func (s *Service) sealHSM(ctx context.Context, k *catalog.Key, plaintext []byte, ec map[string]string) ([]byte, error) {
	st := s.keyStore(k)
	if st == nil || s.hsmKeys == nil {
		return nil, exc("KMSInvalidStateException", k.ARN()+" is unavailable.")
	}
	if err := s.throttle(st); err != nil {
		return nil, err
	}
	hdr := keys.AppendHeader(nil, k.ID, 1)
	aad := keys.AppendAAD(nil, hdr, ec)
	iv, ct, err := s.hsmKeys.Encrypt(ctx, st.ClusterID, hsmLabel(k.Region, k.Account, k.ID), plaintext, aad)
	if err != nil {
		return nil, s.hsmErr(st, err)
	}
	if len(iv) != keys.NonceSize {
		return nil, internal(errors.New("kms: HSM nonce size"))
	}
	blob := append(hdr, iv...)
	return append(blob, ct...), nil
}

// openHSM is the decryption half of sealHSM.
func (s *Service) openHSM(ctx context.Context, k *catalog.Key, b *keys.Blob, ec map[string]string) ([]byte, error) {
	st := s.keyStore(k)
	if st == nil || s.hsmKeys == nil {
		return nil, exc("KMSInvalidStateException", k.ARN()+" is unavailable.")
	}
	if b.KeyVersion != 1 {
		return nil, errCiphertext
	}
	if err := s.throttle(st); err != nil {
		return nil, err
	}
	aad := keys.AppendAAD(nil, b.Header, ec)
	pt, err := s.hsmKeys.Decrypt(ctx, st.ClusterID, hsmLabel(k.Region, k.Account, k.ID), b.Nonce, b.Sealed, aad)
	if err != nil {
		return nil, s.hsmErr(st, err)
	}
	return pt, nil
}
