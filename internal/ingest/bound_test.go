package ingest

import (
	"context"
	"errors"
	"testing"
	"time"
)

type boundKey struct{}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestBoundCtxExpiresThroughDone(t *testing.T) {
	c := newBound(context.Background(), 20*time.Millisecond)
	if d, ok := c.Deadline(); !ok || time.Until(d) > 20*time.Millisecond {
		t.Fatalf("deadline %v %v", d, ok)
	}
	done := c.Done()
	if c.Err() != nil || isClosed(done) {
		t.Fatalf("ended before its deadline: %v", c.Err())
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Done never closed")
	}
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("err %v", c.Err())
	}
	c.cancel()
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("cancel after the deadline changed the error to %v", c.Err())
	}
}

// A caller that only polls Err (as the dedup stores do) learns of the deadline without any
// timer, and a Done asked for afterwards is already closed.
func TestBoundCtxExpiresThroughErr(t *testing.T) {
	c := newBound(context.Background(), time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("err %v", c.Err())
	}
	if !isClosed(c.Done()) {
		t.Fatal("Done open after Err reported the deadline")
	}
	if c.timer != nil {
		t.Fatal("timer armed for a context already ended")
	}
}

func TestBoundCtxCancel(t *testing.T) {
	c := newBound(context.Background(), time.Hour)
	done := c.Done()
	child, stop := context.WithCancel(c)
	defer stop()
	c.cancel()
	if !isClosed(done) || !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("after cancel: closed %v err %v", isClosed(done), c.Err())
	}
	select {
	case <-child.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("child not cancelled")
	}
	c.cancel() // twice is harmless
	if c.timer.Stop() {
		t.Fatal("timer still armed after cancel")
	}
}

// The request's values reach the store call; its cancellation does not (the intake detaches
// it first, and the bound must not undo that).
func TestBoundCtxValuesNotCancellation(t *testing.T) {
	req, cancelReq := context.WithCancel(context.WithValue(context.Background(), boundKey{}, "v"))
	c := newBound(context.WithoutCancel(req), time.Hour)
	defer c.cancel()
	cancelReq()
	if c.Value(boundKey{}) != "v" {
		t.Fatal("value lost")
	}
	if c.Err() != nil || isClosed(c.Done()) || context.Cause(c) != nil {
		t.Fatalf("the request's cancellation reached the bound: %v %v", c.Err(), context.Cause(c))
	}
}
