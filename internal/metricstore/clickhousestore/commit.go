package clickhousestore

// The commit protocol of the package comment ("Commits: atomic, idempotent, fenced, without
// transactions"): Apply, its steps, and Checkpoint, which reads the head they leave.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

// head is a consumer's latest commit.
type head struct {
	seq         uint64
	epoch       uint64
	offsets     map[int32]int64
	finalBefore int64 // Unix micros; 0 = not declared
}

func (s *Store) readHead(ctx context.Context, consumer string) (head, error) {
	h := head{offsets: make(map[int32]int64)}
	ctx, cancel := s.call(ctx)
	defer cancel()
	rows, err := s.query(ctx, "SELECT seq, epoch, partitions, offsets, final_before FROM "+s.db+".heads WHERE consumer = "+quote(consumer)+" ORDER BY version DESC LIMIT 1")
	if err != nil {
		return h, fmt.Errorf("read head of %s: %w", consumer, err)
	}
	defer rows.Close()
	for rows.Next() {
		var parts []int32
		var offs []int64
		if err := rows.Scan(&h.seq, &h.epoch, &parts, &offs, &h.finalBefore); err != nil {
			return h, fmt.Errorf("read head of %s: %w", consumer, err)
		}
		if len(parts) != len(offs) {
			return h, fmt.Errorf("read head of %s: %d partitions, %d offsets", consumer, len(parts), len(offs))
		}
		for i, p := range parts {
			h.offsets[p] = offs[i]
		}
	}
	if err := rows.Err(); err != nil {
		return h, fmt.Errorf("read head of %s: %w", consumer, err)
	}
	return h, nil
}

// busyError says another writer's attempt at the same seq is live.
type busyError struct {
	seq  uint64
	wait time.Duration
}

func (e *busyError) Error() string {
	return fmt.Sprintf("another writer is committing seq %d", e.seq)
}

// consumerLock is the mutex that serialises this process's commits of consumer.
func (s *Store) consumerLock(consumer string) *sync.Mutex {
	if mu, ok := s.locks.Load(consumer); ok {
		return mu.(*sync.Mutex)
	}
	mu, _ := s.locks.LoadOrStore(consumer, new(sync.Mutex))
	return mu.(*sync.Mutex)
}

// Apply implements metricstore.Store.
func (s *Store) Apply(ctx context.Context, c *metricstore.Commit) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.Consumer == "" || len(c.Consumer) > 255 {
		return fmt.Errorf("%w: consumer name %q", metricstore.ErrInvalidDelta, c.Consumer)
	}
	for _, r := range c.Ranges {
		if r.To < r.From {
			return fmt.Errorf("%w: partition %d range [%d, %d)", metricstore.ErrInvalidDelta, r.Partition, r.From, r.To)
		}
	}
	start := time.Now()
	rows, err := s.buildRows(c.Deltas)
	if err != nil {
		return err
	}
	s.life.RLock()
	defer s.life.RUnlock()
	if s.closed {
		return metricstore.ErrClosed
	}
	// One commit at a time per consumer: other consumers (the aggregators of other
	// partitions, charging) go on while this one waits for a competing attempt.
	mu := s.consumerLock(c.Consumer)
	mu.Lock()
	defer mu.Unlock()
	for attempt := 0; ; attempt++ {
		err := s.applyOnce(ctx, c, rows)
		var busy *busyError
		if !errors.As(err, &busy) {
			if err != nil {
				if errors.Is(err, metricstore.ErrConflict) {
					s.conflicts.Add(1)
				}
				return err
			}
			break
		}
		// Wait until the other attempt is either committed (the fence then decides) or a
		// lease old (dead, or given up by its writer).
		s.waits.Add(1)
		if attempt >= 3 {
			s.conflicts.Add(1)
			return fmt.Errorf("%w: %s: %v", metricstore.ErrConflict, c.Consumer, busy)
		}
		s.opts.Logger.Info("metric store commit waits for another attempt", "consumer", c.Consumer, "seq", busy.seq, "wait", busy.wait)
		t := time.NewTimer(busy.wait)
		select {
		case <-ctx.Done():
			t.Stop()
			s.conflicts.Add(1)
			return fmt.Errorf("%w: %s: %v", metricstore.ErrConflict, c.Consumer, busy)
		case <-t.C:
		}
	}
	took := time.Since(start).Nanoseconds()
	s.applies.Add(1)
	s.deltas.Add(int64(len(c.Deltas)))
	s.rowsWritten.Add(int64(len(rows.level)))
	s.applyNanos.Add(took)
	s.lastApply.Store(took)
	return nil
}

// applyOnce is one commit attempt (steps 1-6 of the package comment).
func (s *Store) applyOnce(ctx context.Context, c *metricstore.Commit, rows *countRows) error {
	h, err := s.readHead(ctx, c.Consumer)
	if err != nil {
		return err
	}
	if h.epoch > c.Epoch {
		return fmt.Errorf("%w: %s was committed at epoch %d, this writer has epoch %d", metricstore.ErrFenced, c.Consumer, h.epoch, c.Epoch)
	}
	next := h.offsets // a fresh map per read
	for _, r := range c.Ranges {
		if o, ok := next[r.Partition]; ok && o != r.From {
			return fmt.Errorf("%w: %s partition %d at offset %d, commit starts at %d", metricstore.ErrConflict, c.Consumer, r.Partition, o, r.From)
		}
		next[r.Partition] = r.To
	}
	fb := h.finalBefore
	if v := c.FinalBefore.UnixMicro(); !c.FinalBefore.IsZero() && v > fb {
		fb = v
	}
	marks, err := s.buildMarks(ctx, c, h.finalBefore)
	if err != nil {
		return err
	}
	seq := h.seq + 1
	token := rand.Uint64() | 1 // never 0
	t0 := time.Now()
	if err := s.insertIntent(ctx, c.Consumer, seq, token, c.Epoch); err != nil {
		return fmt.Errorf("commit %s seq %d: %w", c.Consumer, seq, err)
	}
	if s.failAfter == 2 {
		return errCrash
	}
	// From here until the head row, a failure marks this attempt aborted (best effort), so
	// the next attempt need not wait for the lease.
	abort := func(err error) error {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.Timeout)
		defer cancel()
		if aerr := s.insertMarkers(actx, "aborted", c.Consumer, seq, token); aerr != nil {
			s.opts.Logger.Warn("metric store: cannot mark a failed commit attempt aborted; the next one waits for the lease", "consumer", c.Consumer, "seq", seq, "err", aerr)
		} else {
			s.aborted.Add(1)
		}
		return err
	}
	live, dead, newer, err := s.competitors(ctx, c.Consumer, seq, token, c.Epoch)
	if err != nil {
		return abort(fmt.Errorf("commit %s seq %d: %w", c.Consumer, seq, err))
	}
	if newer {
		return abort(fmt.Errorf("%w: %s seq %d is being committed by a writer of a later epoch than %d", metricstore.ErrFenced, c.Consumer, seq, c.Epoch))
	}
	if live > 0 {
		return abort(&busyError{seq: seq, wait: s.opts.Lease - live + 2*time.Second})
	}
	if len(dead) > 0 {
		if err := s.insertMarkers(ctx, "aborted", c.Consumer, seq, dead...); err != nil {
			return abort(fmt.Errorf("commit %s seq %d: abort dead attempts: %w", c.Consumer, seq, err))
		}
		s.aborted.Add(int64(len(dead)))
		s.opts.Logger.Info("metric store aborted dead commit attempts", "consumer", c.Consumer, "seq", seq, "attempts", len(dead))
	}
	if s.failAfter == 3 {
		return errCrash
	}
	if len(rows.level) > 0 {
		if err := s.insertCounts(ctx, c.Consumer, seq, token, rows); err != nil {
			return abort(fmt.Errorf("commit %s seq %d: %d rows: %w", c.Consumer, seq, len(rows.level), err))
		}
		if err := s.insertChanges(ctx, c.Consumer, seq, token, rows); err != nil {
			return abort(fmt.Errorf("commit %s seq %d: changes: %w", c.Consumer, seq, err))
		}
	}
	if len(marks.hours) > 0 {
		if err := s.insertMarks(ctx, c.Consumer, seq, token, marks); err != nil {
			return abort(fmt.Errorf("commit %s seq %d: reconciled marks: %w", c.Consumer, seq, err))
		}
	}
	if s.failAfter == 4 {
		return errCrash
	}
	if took := time.Since(t0); took > s.opts.Lease/2 {
		return abort(fmt.Errorf("commit %s seq %d: took %v, more than half the lease %v", c.Consumer, seq, took, s.opts.Lease))
	}
	if s.failAfter == 5 {
		return errCrash
	}
	// The commit point. A failure here is ambiguous (the row may have landed), so it is not
	// marked aborted: the next attempt reads the head and finds out.
	if s.beforeHead != nil {
		s.beforeHead()
	}
	err = s.insertHead(ctx, c.Consumer, seq, token, c.Epoch, next, fb)
	// A head write that met a connection closed under it is sent once more on another
	// connection, as the same row: written twice, the two rows are equal (same seq, token,
	// epoch and version), so whichever landed, readers see the one commit; and this attempt
	// still holds seq S+1 (no other writer of this epoch declares it dead before the lease,
	// and one of a later epoch wins by version whatever this writer does). Only within half
	// the lease of the intent, as for the first write (step 5).
	if err != nil && ctx.Err() == nil && brokenConn(err) && time.Since(t0) <= s.opts.Lease/2 {
		s.opts.Logger.Info("metric store writes a commit head again on another connection", "consumer", c.Consumer, "seq", seq, "err", err)
		err = s.insertHead(ctx, c.Consumer, seq, token, c.Epoch, next, fb)
	}
	if err != nil {
		return fmt.Errorf("commit %s seq %d: write head: %w", c.Consumer, seq, err)
	}
	return nil
}

// competitors looks at the other attempts at (consumer, seq) not marked aborted: newer
// reports one of a later epoch than this writer's (this writer is fenced); attempts of an
// earlier epoch are dead at once (their writer lost the consumer); of this epoch, live is the
// age of the youngest one younger than the lease (0 if none) and the older ones are dead.
func (s *Store) competitors(ctx context.Context, consumer string, seq, token, epoch uint64) (live time.Duration, dead []uint64, newer bool, err error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	key := "consumer = " + quote(consumer) + " AND seq = " + strconv.FormatUint(seq, 10)
	rows, err := s.query(ctx, "SELECT token, epoch, toInt64(now()) - toInt64(at) FROM "+s.db+".intents WHERE "+key+
		" AND token != "+strconv.FormatUint(token, 10)+" AND token NOT IN (SELECT token FROM "+s.db+".aborted WHERE "+key+")")
	if err != nil {
		return 0, nil, false, fmt.Errorf("read intents: %w", err)
	}
	defer rows.Close()
	leaseSec := int64(s.opts.Lease / time.Second)
	youngest := int64(-1)
	for rows.Next() {
		var t, e uint64
		var age int64
		if err := rows.Scan(&t, &e, &age); err != nil {
			return 0, nil, false, fmt.Errorf("read intents: %w", err)
		}
		// at counts whole seconds, so an age above the lease in whole seconds is more than
		// the lease in real time.
		switch {
		case e > epoch:
			newer = true
		case e < epoch || age > leaseSec:
			dead = append(dead, t)
		case youngest < 0 || age < youngest:
			youngest = max(age, 0)
		}
	}
	if err := rows.Err(); err != nil {
		return 0, nil, false, fmt.Errorf("read intents: %w", err)
	}
	if youngest >= 0 {
		live = max(time.Duration(youngest)*time.Second, time.Nanosecond)
	}
	return live, dead, newer, nil
}

func (s *Store) insertIntent(ctx context.Context, consumer string, seq, token, epoch uint64) error {
	ctx, done := s.batchCall(ctx)
	defer done()
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".intents (consumer, seq, token, epoch)")
	if err != nil {
		return fmt.Errorf("insert intent: %w", err)
	}
	if err := b.Append(consumer, seq, token, epoch); err != nil {
		_ = b.Abort()
		return fmt.Errorf("insert intent: %w", err)
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("insert intent: %w", err)
	}
	return nil
}

func (s *Store) insertMarkers(ctx context.Context, table, consumer string, seq uint64, tokens ...uint64) error {
	ctx, done := s.batchCall(ctx)
	defer done()
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+"."+table+" (consumer, seq, token)")
	if err != nil {
		return fmt.Errorf("insert %s: %w", table, err)
	}
	for _, t := range tokens {
		if err := b.Append(consumer, seq, t); err != nil {
			_ = b.Abort()
			return fmt.Errorf("insert %s: %w", table, err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("insert %s: %w", table, err)
	}
	return nil
}

func (s *Store) insertHead(ctx context.Context, consumer string, seq, token, epoch uint64, offsets map[int32]int64, fb int64) error {
	parts := make([]int32, 0, len(offsets))
	for p := range offsets {
		parts = append(parts, p)
	}
	slices.Sort(parts)
	offs := make([]int64, len(parts))
	for i, p := range parts {
		offs[i] = offsets[p]
	}
	ctx, done := s.batchCall(ctx)
	defer done()
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".heads (consumer, seq, token, partitions, offsets, final_before, epoch, version)")
	if err != nil {
		return err
	}
	if err := b.Append(consumer, seq, token, parts, offs, fb, epoch, seq<<32|epoch&(1<<32-1)); err != nil {
		_ = b.Abort()
		return err
	}
	return b.Send()
}

// Checkpoint implements metricstore.Store.
func (s *Store) Checkpoint(ctx context.Context, consumer string) (metricstore.Checkpoint, error) {
	if err := ctx.Err(); err != nil {
		return metricstore.Checkpoint{}, err
	}
	s.life.RLock()
	defer s.life.RUnlock()
	if s.closed {
		return metricstore.Checkpoint{}, metricstore.ErrClosed
	}
	h, err := s.readHead(ctx, consumer)
	if err != nil {
		return metricstore.Checkpoint{}, err
	}
	cp := metricstore.Checkpoint{Offsets: h.offsets}
	if h.finalBefore != 0 {
		cp.FinalBefore = time.UnixMicro(h.finalBefore).UTC()
	}
	return cp, nil
}
