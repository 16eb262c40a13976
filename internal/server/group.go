package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// group runs a process's long-lived components as one unit, in the shape of Prometheus's
// run.Group: every component runs until the group stops, and the first one that returns
// (with an error, or without one before it was asked to stop) stops the whole process, so a
// supervisor restarts it instead of it serving 302s while nothing is counted or charged.
type group struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
	failed chan error // the first component's failure; buffered, written once
}

// errStopped is what a component that returned nil before the group stopped is reported as.
var errStopped = errors.New("stopped unexpectedly")

func newGroup() *group {
	ctx, cancel := context.WithCancel(context.Background())
	return &group{ctx: ctx, cancel: cancel, failed: make(chan error, 1)}
}

// Go starts a component. run must return once its ctx ends.
func (g *group) Go(name string, run func(ctx context.Context) error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		err := run(g.ctx)
		if g.ctx.Err() != nil {
			return // asked to stop
		}
		if err == nil || errors.Is(err, context.Canceled) {
			err = errStopped
		}
		g.fail(fmt.Errorf("%s: %w", name, err))
	}()
}

// fail reports a failure from outside a component (a listener's Serve, say).
func (g *group) fail(err error) {
	g.once.Do(func() { g.failed <- err })
}

// Failed delivers the first failure.
func (g *group) Failed() <-chan error { return g.failed }

// Stop asks every component to stop and waits until all have returned.
func (g *group) Stop() {
	g.cancel()
	g.wg.Wait()
}
