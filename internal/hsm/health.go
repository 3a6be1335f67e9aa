package hsm

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// Health that follows the HSMs. Every Config.ProbeInterval the token of
// each HSM that is ACTIVE or DEGRADED is asked whether it is there (its
// slot's C_GetTokenInfo; a token that went away is looked for again by
// re-initialising the module, at most every 50ms). An HSM whose token
// misses probeMissLimit probes in a row turns DEGRADED, and its cluster
// with it once no HSM is ACTIVE; the first probe that reaches the token
// again gives it the keys it missed and makes it ACTIVE. So DescribeClusters
// and the key operations (which run on ACTIVE HSMs of an ACTIVE cluster
// only) see a broken HSM within probeMissLimit intervals, and a healed one
// within an interval of its return, with no restart and no reconnect: the
// module's session pool logs each returning token in again by itself. A
// token gone for longGone probes is looked for with a re-initialisation of
// its module (which ends the sessions of every token in it) only every
// second probe, so its return is still seen within two intervals.
//
// Custom key stores are not told: as in AWS, a store stays CONNECTED while
// its cluster is broken, and its keys' operations fail one by one with
// KMSInvalidStateException (spec §6.2, §9.1).

// DefaultProbeInterval is the probe interval when Config.ProbeInterval is
// zero.
const DefaultProbeInterval = 10 * time.Second

// probeMissLimit is how many probes in a row must miss a token before its
// HSM is marked DEGRADED: one miss is forgiven (a token another process
// holds open can be missed once), and two keep the bound of three
// intervals from a token's loss to DEGRADED.
const probeMissLimit = 2

// ProbeInterval is how often the tokens are probed.
func (s *Service) ProbeInterval() time.Duration {
	if s.cfg.ProbeInterval <= 0 {
		return DefaultProbeInterval
	}
	return s.cfg.ProbeInterval
}

// probeLoop probes every interval until ctx ends.
func (s *Service) probeLoop(ctx context.Context) {
	t := time.NewTicker(s.ProbeInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.probeAll(ctx)
	}
}

// probeAll probes the HSMs of every cluster once.
func (s *Service) probeAll(ctx context.Context) {
	s.mu.RLock()
	ids := make([]string, 0, len(s.clusters))
	for id, r := range s.clusters {
		if probed(r) {
			ids = append(ids, id)
		}
	}
	s.mu.RUnlock()
	sort.Strings(ids)
	for _, id := range ids {
		if ctx.Err() != nil {
			return
		}
		s.probeCluster(ctx, id)
	}
}

// probed reports whether r has HSMs the probe looks at: the ACTIVE and
// DEGRADED ones of a cluster that is neither being created nor deleted.
func probed(r *record) bool {
	switch r.State {
	case ClusterCreateInProgress, ClusterDeleteInProgress, ClusterDeleted:
		return false
	}
	for _, h := range r.HSMs {
		if h.State == HSMActive || h.State == HSMDegraded {
			return true
		}
	}
	return false
}

// ProbeCluster probes the HSMs of cluster id now, rather than at the next
// interval: a key store connecting to a cluster whose HSMs were last seen
// DEGRADED must find out whether their tokens are back (AWS's HSM states
// are always current).
func (s *Service) ProbeCluster(ctx context.Context, id string) { s.probeCluster(ctx, id) }

// probeCluster checks the tokens of cluster id and stores the HSM and
// cluster states when they changed.
func (s *Service) probeCluster(ctx context.Context, id string) {
	cur, ok := s.byID(id)
	if !ok || !probed(cur) {
		return
	}
	toks, err := s.tokensFor(cur)
	if err != nil {
		return // no PKCS#11 here: nothing can be probed
	}
	_, err = s.act(ctx, id, func(r *record) error {
		before := fmt.Sprint(r.State, r.StateMessage, r.HSMs)
		s.probe(ctx, r, toks)
		if fmt.Sprint(r.State, r.StateMessage, r.HSMs) == before {
			return errSkip
		}
		for _, h := range r.HSMs {
			s.log.Info("hsm: HSM state", "cluster", r.ID, "hsm", h.ID, "token", h.label(), "state", h.State, "reason", h.StateMessage)
		}
		s.log.Info("hsm: cluster state", "cluster", r.ID, "state", r.State)
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) {
		s.log.Error("hsm: probe cluster", "cluster", id, "err", err)
	}
}

// probe sets the state of each ACTIVE or DEGRADED HSM of r from its token:
// DEGRADED while the token cannot be found (Refresh re-initialises the
// module to find a token that came back) or has lost its crypto user;
// ACTIVE again once it answers, after receiving the cluster's keys (and
// password) it missed. An ACTIVE or DEGRADED cluster is DEGRADED when it
// has such HSMs and none of them is ACTIVE. Callers hold r's lock.
func (s *Service) probe(ctx context.Context, r *record, toks tokens) {
	probedHSMs, active := 0, 0
	where := "kmsd's SoftHSM2 module"
	if r.Module != "" {
		where = "module " + r.Module
	}
	for i := range r.HSMs {
		h := &r.HSMs[i]
		if h.State != HSMActive && h.State != HSMDegraded {
			continue
		}
		probedHSMs++
		state, msg := HSMActive, ""
		look := toks.Refresh
		if n := s.misses(h.ID); h.State == HSMDegraded && n >= longGone && n%2 != 0 {
			// Long gone: re-initialising the module (which ends every token's
			// sessions) every second probe still sees a return within two
			// intervals.
			look = toks.Present
		}
		if err := look(ctx, h.label()); err != nil {
			state, msg = HSMDegraded, fmt.Sprintf("Token %s cannot be reached in %s.", h.label(), where)
			if s.probeMiss(h.ID) < probeMissLimit && h.State == HSMActive {
				state, msg = HSMActive, ""
			}
		} else {
			s.probeReached(h.ID)
			if r.cryptoUser() != nil {
				if ok, err := toks.UserPINInitialized(ctx, h.label()); err != nil || !ok {
					state, msg = HSMDegraded, fmt.Sprintf("Token %s has no user PIN; initialise the token and its user PIN.", h.label())
				} else if h.State != HSMActive {
					if err := s.resync(ctx, r, toks, h.label()); err != nil {
						state, msg = HSMDegraded, fmt.Sprintf("Token %s could not be given the cluster's keys: %v", h.label(), err)
					}
				}
			}
		}
		h.State, h.StateMessage = state, msg
		if state == HSMActive {
			active++
		}
	}
	if r.State != ClusterActive && r.State != ClusterDegraded {
		return // not yet activated: the life cycle owns the state
	}
	r.State, r.StateMessage = ClusterActive, ""
	if probedHSMs > 0 && active == 0 {
		r.State, r.StateMessage = ClusterDegraded, "No HSM of the cluster can be reached."
	}
}

// resync gives token label, back after an absence, what it missed: the
// crypto user's password (a key store's connect rotates it; the token's
// user PIN is then set again as the SO) and the keys made meanwhile. A
// login made here only for the sync ends with it.
func (s *Service) resync(ctx context.Context, r *record, toks tokens, label string) error {
	u := r.cryptoUser()
	if u == nil {
		return nil
	}
	pw, err := s.open(userPath(r.ID, u.Name), u.Password)
	if err != nil {
		return err
	}
	defer clear(pw)
	err = toks.Login(ctx, label, string(pw))
	if errors.Is(err, ErrInvalidCredentials) && len(r.SOPIN) > 0 {
		so, oerr := s.open(soPINPath(r.ID), r.SOPIN)
		if oerr != nil {
			return oerr
		}
		err = toks.InitUserPIN(ctx, label, string(so), string(pw))
		clear(so)
		if err == nil {
			err = toks.Login(ctx, label, string(pw))
		}
	}
	if err == nil {
		err = s.syncKeys(ctx, r, label)
	}
	if !s.loggedIn(r.ID) {
		toks.Logout(ctx, label)
	}
	return err
}

// longGone is how many probes in a row must miss a token before it is
// looked for with a module re-initialisation only every second probe.
const longGone = 6

// misses returns HSM id's count of consecutive missed probes.
func (s *Service) misses(id string) int {
	s.probeMu.Lock()
	defer s.probeMu.Unlock()
	return s.probeMisses[id]
}

// probeMiss records one missed probe of HSM id and returns the count of
// consecutive misses.
func (s *Service) probeMiss(id string) int {
	s.probeMu.Lock()
	defer s.probeMu.Unlock()
	if s.probeMisses == nil {
		s.probeMisses = map[string]int{}
	}
	s.probeMisses[id]++
	return s.probeMisses[id]
}

// probeReached resets HSM id's count of missed probes.
func (s *Service) probeReached(id string) {
	s.probeMu.Lock()
	delete(s.probeMisses, id)
	s.probeMu.Unlock()
}

// HSMStatus is an HSM's state, for metrics.
type HSMStatus struct {
	ID, State string
}

// ClusterStatus is a cluster's state and its HSMs' states, for metrics.
type ClusterStatus struct {
	ID, Account, Region, State string
	HSMs                       []HSMStatus
}

// Statuses returns the state of every cluster that is not DELETED, and of
// its HSMs, by cluster id.
func (s *Service) Statuses() []ClusterStatus {
	s.mu.RLock()
	out := make([]ClusterStatus, 0, len(s.clusters))
	for _, r := range s.clusters {
		if r.State == ClusterDeleted {
			continue
		}
		cs := ClusterStatus{ID: r.ID, Account: r.Account, Region: r.Region, State: r.State}
		for _, h := range r.HSMs {
			cs.HSMs = append(cs.HSMs, HSMStatus{ID: h.ID, State: h.State})
		}
		out = append(out, cs)
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
