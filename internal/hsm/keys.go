package hsm

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
)

// Key operations for the key store layer. They need the cluster's crypto
// user logged in (Login), run on the cluster's ACTIVE HSMs, and fail with
// the package's typed errors.

// IVSize is the AES-GCM nonce size Encrypt uses; TagSize the tag size.
const (
	IVSize  = 12
	TagSize = 16
)

// MaxKeyLabel bounds a key label (a KMS key ARN fits comfortably).
const MaxKeyLabel = 256

var rr atomic.Uint64 // spreads crypto calls over a cluster's HSMs

// keyCluster returns the cluster for a key operation: ACTIVE, with an
// ACTIVE HSM, and the crypto user logged in.
func (s *Service) keyCluster(clusterID string) (*record, error) {
	r, ok := s.byID(clusterID)
	if !ok {
		// Not cached yet (made through another node a moment ago, and
		// the change feed has not told this one): read it.
		ctx, cancel := s.readCtx()
		fr, err := s.fresh(ctx, clusterID)
		cancel()
		r, ok = fr, err == nil
	}
	if !ok || r.State == ClusterDeleted {
		return nil, fmt.Errorf("%w: %s", ErrClusterNotFound, clusterID)
	}
	if r.State != ClusterActive {
		return nil, fmt.Errorf("%w: cluster %s is %s", ErrClusterNotActive, clusterID, r.State)
	}
	if len(r.activeHSMs()) == 0 {
		return nil, fmt.Errorf("%w: cluster %s", ErrNoActiveHSM, clusterID)
	}
	if !s.loggedIn(clusterID) {
		return nil, fmt.Errorf("%w: cluster %s", ErrNotLoggedIn, clusterID)
	}
	return r, nil
}

// CreateKey creates a non-extractable AES-256 key labelled label on every
// ACTIVE HSM of the cluster: generated in one, wrapped under the cluster's
// masking key, unwrapped into the others. The wrapped form is kept so that
// HSMs added later receive the key.
func (s *Service) CreateKey(ctx context.Context, clusterID, label string) error {
	if label == "" || len(label) > MaxKeyLabel {
		return fmt.Errorf("%w: a key label has 1 to %d bytes", ErrInvalidRequest, MaxKeyLabel)
	}
	kr, err := s.keyCluster(clusterID)
	if err != nil {
		return err
	}
	toks, err := s.tokensFor(kr)
	if err != nil {
		return err
	}
	var made []hsmRecord
	undo := func() {
		for _, h := range made {
			toks.DestroyKey(ctx, h.label(), label)
		}
	}
	_, err = s.act(ctx, clusterID, func(r *record) error {
		if r.key(label) != nil {
			return fmt.Errorf("%w: %s", ErrKeyExists, label)
		}
		hs := r.activeHSMs()
		if len(hs) == 0 {
			return fmt.Errorf("%w: cluster %s", ErrNoActiveHSM, clusterID)
		}
		mk, err := s.open(maskingPath(r.ID), r.Masking)
		if err != nil {
			return err
		}
		defer clear(mk)
		var wrapped []byte
		for _, h := range hs {
			var err error
			if wrapped == nil {
				if err = s.syncKeys(ctx, r, h.label()); err == nil { // masking key present
					wrapped, err = toks.GenerateKey(ctx, h.label(), label, mk)
				}
			} else if err = toks.ImportMasking(ctx, h.label(), mk); err == nil {
				err = toks.UnwrapKey(ctx, h.label(), label, wrapped, mk)
			}
			if err != nil {
				undo()
				return fmt.Errorf("HSM %s: %w", h.ID, err)
			}
			made = append(made, h)
		}
		r.Keys = append(r.Keys, keyRecord{Label: label, Wrapped: wrapped, Created: s.now().UTC()})
		return nil
	})
	if errors.Is(err, errConflict) {
		// Another node changed the cluster's keys meanwhile: the key made
		// here is not recorded, so it goes.
		undo()
	}
	return err
}

// withKey returns r, or r read afresh from the store when the cached r
// lacks key label: a key made through another node a moment ago is in
// the store before the change feed brings it here.
func (s *Service) withKey(r *record, label string) (*record, error) {
	if r.key(label) != nil {
		return r, nil
	}
	ctx, cancel := s.readCtx()
	defer cancel()
	fr, err := s.fresh(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	if fr.key(label) == nil {
		return nil, fmt.Errorf("%w: %s", ErrKeyNotFound, label)
	}
	if fr.State != ClusterActive || len(fr.activeHSMs()) == 0 {
		return s.keyCluster(r.ID) // the state changed too: say how
	}
	return fr, nil
}

// onHSM runs fn on the cluster's ACTIVE HSMs in turn until one answers
// with something other than ErrUnreachable.
func (s *Service) onHSM(r *record, fn func(label string) error) error {
	hs := r.activeHSMs()
	start := int(rr.Add(1) % uint64(len(hs)))
	var err error
	for i := range hs {
		err = fn(hs[(start+i)%len(hs)].label())
		if !errors.Is(err, ErrUnreachable) {
			return err
		}
	}
	return err
}

// Encrypt encrypts plaintext with key label under CKM_AES_GCM (128-bit
// tag, aad authenticated) in one of the cluster's HSMs. The ciphertext
// ends with the tag; iv is drawn from the service's randomness.
func (s *Service) Encrypt(ctx context.Context, clusterID, label string, plaintext, aad []byte) (iv, ciphertext []byte, err error) {
	r, err := s.keyCluster(clusterID)
	if err != nil {
		return nil, nil, err
	}
	if r, err = s.withKey(r, label); err != nil {
		return nil, nil, err
	}
	toks, err := s.tokensFor(r)
	if err != nil {
		return nil, nil, err
	}
	iv = s.randomBytes(IVSize)
	err = s.onHSM(r, func(h string) error {
		ciphertext, err = toks.Encrypt(ctx, h, label, iv, plaintext, aad)
		return err
	})
	return iv, ciphertext, err
}

// Decrypt reverses Encrypt. A ciphertext that does not authenticate is an
// error wrapping the PKCS#11 code (CKR_ENCRYPTED_DATA_INVALID).
func (s *Service) Decrypt(ctx context.Context, clusterID, label string, iv, ciphertext, aad []byte) ([]byte, error) {
	r, err := s.keyCluster(clusterID)
	if err != nil {
		return nil, err
	}
	if r, err = s.withKey(r, label); err != nil {
		return nil, err
	}
	if len(iv) != IVSize || len(ciphertext) < TagSize {
		return nil, fmt.Errorf("%w: malformed ciphertext", ErrInvalidRequest)
	}
	toks, err := s.tokensFor(r)
	if err != nil {
		return nil, err
	}
	var pt []byte
	err = s.onHSM(r, func(h string) error {
		pt, err = toks.Decrypt(ctx, h, label, iv, ciphertext, aad)
		return err
	})
	return pt, err
}

// GenerateRandom draws n random bytes from one of the cluster's HSMs.
func (s *Service) GenerateRandom(ctx context.Context, clusterID string, n int) ([]byte, error) {
	r, err := s.keyCluster(clusterID)
	if err != nil {
		return nil, err
	}
	toks, err := s.tokensFor(r)
	if err != nil {
		return nil, err
	}
	var out []byte
	err = s.onHSM(r, func(h string) error {
		out, err = toks.Random(ctx, h, n)
		return err
	})
	return out, err
}

// DeleteKey destroys key label on every ACTIVE HSM and forgets it. A key
// already gone from an HSM is not an error; a key unknown to the cluster is
// ErrKeyNotFound.
func (s *Service) DeleteKey(ctx context.Context, clusterID, label string) error {
	kr, err := s.keyCluster(clusterID)
	if err != nil {
		return err
	}
	toks, err := s.tokensFor(kr)
	if err != nil {
		return err
	}
	_, err = s.act(ctx, clusterID, func(r *record) error {
		if r.key(label) == nil {
			return fmt.Errorf("%w: %s", ErrKeyNotFound, label)
		}
		for _, h := range r.activeHSMs() {
			if err := toks.DestroyKey(ctx, h.label(), label); err != nil && !errors.Is(err, ErrKeyNotFound) {
				return fmt.Errorf("HSM %s: %w", h.ID, err)
			}
		}
		keys := r.Keys[:0]
		for _, k := range r.Keys {
			if k.Label != label {
				keys = append(keys, k)
			}
		}
		r.Keys = keys
		return nil
	})
	return err
}

// KeyInfo is a key as the CLI's key list shows it: its label and the HSMs
// that really hold it (asked of each token).
type KeyInfo struct {
	Label string
	HSMs  []string
}

// Keys lists the cluster's keys with the HSMs that hold each, from the
// tokens themselves.
func (s *Service) Keys(ctx context.Context, clusterID string) ([]KeyInfo, error) {
	r, err := s.keyCluster(clusterID)
	if err != nil {
		return nil, err
	}
	toks, err := s.tokensFor(r)
	if err != nil {
		return nil, err
	}
	byLabel := map[string]*KeyInfo{}
	var out []*KeyInfo
	for _, k := range r.Keys {
		ki := &KeyInfo{Label: k.Label}
		byLabel[k.Label] = ki
		out = append(out, ki)
	}
	for _, h := range r.activeHSMs() {
		labels, err := toks.ListKeys(ctx, h.label())
		if err != nil {
			return nil, fmt.Errorf("HSM %s: %w", h.ID, err)
		}
		for _, l := range labels {
			ki, ok := byLabel[l]
			if !ok { // on the token but not made through kmsd
				ki = &KeyInfo{Label: l}
				byLabel[l] = ki
				out = append(out, ki)
			}
			ki.HSMs = append(ki.HSMs, h.ID)
		}
	}
	res := make([]KeyInfo, len(out))
	for i, k := range out {
		res[i] = *k
	}
	return res, nil
}

// HSM is an HSM as the key store layer sees it.
type HSM struct {
	ID, AvailabilityZone, State, TokenLabel string
}

// ClusterInfo is what the key store layer checks of a cluster.
type ClusterInfo struct {
	ID, Account, Region, State string
	TrustAnchor, ClusterCert   string
	SubnetMapping              map[string]string
	HSMs                       []HSM
	CryptoUser                 string // "" when there is none
	Locked                     bool   // the crypto user is locked out
}

// Describe returns cluster id of c's account and Region.
func (s *Service) Describe(c Caller, id string) (ClusterInfo, error) {
	ctx, cancel := s.readCtx()
	defer cancel()
	r, err := s.cluster(ctx, c, id)
	if err != nil {
		return ClusterInfo{}, err
	}
	ci := ClusterInfo{ID: r.ID, Account: r.Account, Region: r.Region, State: r.State, TrustAnchor: r.TrustAnchor,
		ClusterCert: r.ClusterCert, SubnetMapping: r.Subnets}
	for _, h := range r.HSMs {
		ci.HSMs = append(ci.HSMs, HSM{ID: h.ID, AvailabilityZone: h.AZ, State: h.State, TokenLabel: h.label()})
	}
	if u := r.cryptoUser(); u != nil {
		ci.CryptoUser, ci.Locked = u.Name, u.FailedLogins >= MaxFailedLogins
	}
	return ci, nil
}
