package ingest

import (
	"context"
	"sync"
	"time"
)

// boundCtx is the deadline of one call to the log or the dedup store, cheaper than
// context.WithTimeout on the per-click path: it allocates only itself until somebody asks
// for Done, and only then a channel and a timer. The dedup stores mostly read the deadline
// or Err, so most calls never arm a timer; WithTimeout allocates four objects every time.
//
// Its parent must not be cancelled (the intake passes context.WithoutCancel): the bound is
// the only way it ends, besides cancel. Values come from the parent.
type boundCtx struct {
	context.Context
	deadline time.Time

	mu    sync.Mutex
	done  chan struct{} // made by the first Done
	timer *time.Timer   // armed by the first Done, closes done at the deadline
	err   error
}

// newBound returns parent bounded by d from now; call its cancel when the call returns.
func newBound(parent context.Context, d time.Duration) *boundCtx {
	return &boundCtx{Context: parent, deadline: time.Now().Add(d)}
}

func (c *boundCtx) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *boundCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		c.checkLocked()
		if c.err != nil {
			close(c.done)
		} else {
			c.timer = time.AfterFunc(time.Until(c.deadline), c.expire)
		}
	}
	return c.done
}

// Err reads the clock, so a call that never asked for Done still learns that its bound passed.
func (c *boundCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.checkLocked()
	return c.err
}

func (c *boundCtx) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.endLocked(context.DeadlineExceeded)
}

// checkLocked ends the context if its deadline has passed.
func (c *boundCtx) checkLocked() {
	if c.err == nil && !time.Now().Before(c.deadline) {
		c.endLocked(context.DeadlineExceeded)
	}
}

// endLocked sets the error once and closes done if it was handed out.
func (c *boundCtx) endLocked(err error) {
	if c.err != nil {
		return
	}
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
}

// cancel ends the context with context.Canceled and stops its timer, as WithTimeout's cancel.
func (c *boundCtx) cancel() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.endLocked(context.Canceled)
}

// String is what fmt prints for the context, as the context package's own types have one.
func (c *boundCtx) String() string { return "ingest.boundCtx" }
