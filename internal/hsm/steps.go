package hsm

import (
	"context"
	"time"
)

// Asynchronous steps. An API call that starts a step (CreateCluster,
// InitializeCluster, CreateHsm, DeleteHsm, DeleteCluster) records its
// intent in the cluster's record — the *_IN_PROGRESS state and the time
// it is due (record.Due, hsmRecord.Due) — and returns. The steps loop,
// which runs in RunBackground and so, with Config.Controlled, on kmsd's
// controller only, finishes every step that is due, whichever node
// recorded it: a node that dies after answering leaves nothing stuck, as
// the next controller finds the step in the store.
//
// Exactly once: each finisher re-checks, in the transaction that records
// its result, that the step is still in progress, and the controller's
// writes are fenced by its lease (controller.Fence), so a controller that
// lost its lease while finishing records nothing. Token side effects are
// idempotent: creating an HSM whose token already exists (a controller
// died after C_InitToken) reuses the token; deleting a token that is gone
// is only logged.

// stepTick is how often the steps loop looks at the store for steps that
// are due when nothing woke it earlier.
const stepTick = 200 * time.Millisecond

// kick wakes the steps loop of this node, if it runs here, at once.
func (s *Service) kick() {
	select {
	case s.kickc <- struct{}{}:
	default:
	}
}

// stepLoop finishes due steps until ctx ends.
func (s *Service) stepLoop(ctx context.Context) {
	for {
		wait := s.runSteps(ctx)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-s.kickc:
			t.Stop()
		case <-t.C:
		}
	}
}

// runSteps finishes the steps due now, read from the store, and returns
// how long to wait before the next one is due (at most stepTick).
func (s *Service) runSteps(ctx context.Context) time.Duration {
	rs, err := s.all(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("hsm: steps: list clusters", "err", err)
		}
		return stepTick
	}
	now := s.dbNow() // Due and BackupDue are on the database's clock
	wait := stepTick
	due := func(t time.Time) bool {
		if d := t.Sub(now); d > 0 {
			wait = min(wait, d)
			return false
		}
		return true
	}
	for _, r := range rs {
		if ctx.Err() != nil {
			return 0
		}
		s.install(r)
		switch r.State {
		case ClusterCreateInProgress:
			if due(r.Due) {
				s.finishCreate(ctx, r.ID)
			}
		case ClusterInitializeInProgress:
			if due(r.Due) {
				s.finishInitialize(ctx, r.ID)
			}
		case ClusterDeleteInProgress:
			if due(r.Due) {
				s.finishDeleteCluster(ctx, r.ID)
			}
		}
		// A backup a change marked due, whichever node made the change.
		if r.BackupDue != nil && backedUp(r) && due(*r.BackupDue) {
			s.dueBackup(ctx, r)
		}
		for _, h := range r.HSMs {
			switch h.State {
			case HSMCreateInProgress:
				if due(h.Due) {
					s.finishCreateHSM(ctx, r.ID, h.ID)
				}
			case HSMDeleteInProgress:
				if due(h.Due) {
					s.finishDeleteHSM(ctx, r.ID, h.ID)
				}
			}
		}
	}
	return wait
}
