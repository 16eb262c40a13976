package archive

import (
	"context"
	"fmt"
	"time"
)

// Ownership. In scale-out, process nodes share the log's partitions through a consumer
// group, and each partition is archived by the node that owns it. The group drives the
// Archiver with Assign and Revoke; an embedded Archiver owns every partition from New.
//
// Handing a partition over is safe because of the layout: the new owner starts at the
// partition's checkpoint, and the cut rule depends only on the log (the one clock-dependent
// cut, the idle close, is recorded in the checkpoint before its file is written), so a file
// the new owner writes for a range the old one also wrote has the same name and the same
// bytes (TestHandOverSameFiles). What the group must ensure, and Revoke provides, is that
// the old owner has stopped before the new one starts: two writers at once could each
// record a different idle close.

// Assign makes the Archiver write partitions, starting from each one's checkpoint. It
// fails for a partition the log does not have. Assigning an owned partition is a no-op.
func (a *Archiver) Assign(ctx context.Context, partitions []int32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, p := range partitions {
		if p < 0 || int(p) >= len(a.parts) {
			return fmt.Errorf("archive: assign partition %d: the log has %d", p, len(a.parts))
		}
	}
	for _, p := range partitions {
		st := a.parts[p]
		st.run.Lock()
		if !st.owned.Load() {
			st.reset() // resume from the checkpoint, which the previous owner moved
			st.owned.Store(true)
		}
		st.run.Unlock()
		a.publishOwner(st)
	}
	return nil
}

// Revoke stops writing partitions and returns once nothing more will be written for them:
// a step in progress is cancelled and waited for (a write cut short leaves the old file or
// the new one, never part of one), and the open file, not yet durable, is dropped; the next
// owner reads it again from the checkpoint. Unknown or unowned partitions are ignored.
func (a *Archiver) Revoke(partitions []int32) {
	for _, p := range partitions {
		if p < 0 || int(p) >= len(a.parts) {
			continue
		}
		st := a.parts[p]
		st.owned.Store(false)
		st.cmu.Lock()
		if st.cancel != nil {
			st.cancel()
		}
		st.cmu.Unlock()
		st.run.Lock() // waits for the step in progress
		st.reset()
		st.run.Unlock()
		a.publishOwner(st)
	}
}

// Owned lists the partitions the Archiver writes.
func (a *Archiver) Owned() []int32 {
	var out []int32
	for _, st := range a.parts {
		if st.owned.Load() {
			out = append(out, int32(st.p))
		}
	}
	return out
}

// ownedStep runs one step of st if the Archiver owns it, under st.run and with a context
// Revoke can cancel. owned is false when it did nothing.
func (a *Archiver) ownedStep(ctx context.Context, st *partState) (n int, owned bool, err error) {
	if !st.owned.Load() {
		return 0, false, nil
	}
	st.run.Lock()
	defer st.run.Unlock()
	if !st.owned.Load() {
		return 0, false, nil
	}
	sctx, cancel := context.WithCancel(ctx)
	st.cmu.Lock()
	st.cancel = cancel
	st.cmu.Unlock()
	n, err = a.step(sctx, st)
	st.cmu.Lock()
	st.cancel = nil
	st.cmu.Unlock()
	cancel()
	if err != nil && !st.owned.Load() {
		// Cut short by Revoke: not a failure of the target.
		st.reset()
		return 0, false, nil
	}
	return n, true, err
}

func (a *Archiver) publishOwner(st *partState) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ps := &a.stats.Partitions[st.p]
	ps.Owned = st.owned.Load()
	if !ps.Owned {
		ps.Pending, ps.PendingSince, ps.Lag = 0, time.Time{}, 0
	}
}

// Err is nil while the archive target works: it reports the failure once reads or writes
// of the target have failed, with no success since, for UnhealthyAfter. /readyz shows it.
func (a *Archiver) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failingSince.IsZero() || time.Since(a.failingSince) < a.opts.UnhealthyAfter {
		return nil
	}
	return fmt.Errorf("archive %s failing since %s: %s", a.target, a.failingSince.UTC().Format(time.RFC3339), a.stats.LastError)
}
