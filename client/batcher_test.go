package client_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/client"
)

// eventSink is a POST /events that accepts every line and records the batches.
type eventSink struct {
	mu      sync.Mutex
	batches [][]string // impression ids per request
	status  int        // when not 0, answer this instead
}

func (s *eventSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.status != 0 {
		w.WriteHeader(s.status)
		fmt.Fprint(w, `{"error":{"code":"invalid_argument","message":"no"}}`)
		return
	}
	var ids []string
	sc := bufio.NewScanner(r.Body)
	for sc.Scan() {
		var e struct {
			ImpressionID string `json:"impression_id"`
		}
		if err := json.Unmarshal(bytes.TrimSpace(sc.Bytes()), &e); err != nil {
			w.WriteHeader(400)
			return
		}
		ids = append(ids, e.ImpressionID)
	}
	s.mu.Lock()
	s.batches = append(s.batches, ids)
	s.mu.Unlock()
	fmt.Fprintf(w, `{"accepted":%d,"duplicates":0,"rejected":0,"errors":[]}`, len(ids))
}

func (s *eventSink) sizes() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n []int
	for _, b := range s.batches {
		n = append(n, len(b))
	}
	return n
}

func imp(i int) client.Event {
	return client.Event{Type: "impression", AdID: "a1", ImpressionID: fmt.Sprint("i", i)}
}

func TestBatcherFlushBySize(t *testing.T) {
	sink := &eventSink{}
	ts := httptest.NewServer(sink)
	defer ts.Close()
	c := newClient(t, client.Config{BaseURL: ts.URL})
	flushed := make(chan int, 10)
	b := c.NewBatcher(client.BatcherConfig{MaxEvents: 10, Interval: time.Hour, OnFlush: func(evs []client.Event, res client.Result, err error) {
		if err != nil || res.Accepted != len(evs) {
			t.Errorf("flush of %d: %+v, %v", len(evs), res, err)
		}
		flushed <- len(evs)
	}})
	for i := range 25 {
		if err := b.Add(imp(i)); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if n := <-flushed; n != 10 {
			t.Fatalf("flush of %d events, want 10", n)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := <-flushed; n != 5 {
		t.Fatalf("Close flushed %d events, want 5", n)
	}
	if err := b.Add(imp(99)); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Add after Close: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if got := sink.sizes(); fmt.Sprint(got) != "[10 10 5]" {
		t.Fatalf("batches %v", got)
	}
}

func TestBatcherFlushByInterval(t *testing.T) {
	sink := &eventSink{}
	ts := httptest.NewServer(sink)
	defer ts.Close()
	c := newClient(t, client.Config{BaseURL: ts.URL})
	b := c.NewBatcher(client.BatcherConfig{MaxEvents: 1000, Interval: 20 * time.Millisecond})
	defer b.Close()
	for i := range 3 {
		if err := b.Add(imp(i)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for fmt.Sprint(sink.sizes()) != "[3]" {
		if time.Now().After(deadline) {
			t.Fatalf("batches %v, want one of 3 sent by the interval", sink.sizes())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestBatcherCloseAndFlush(t *testing.T) {
	sink := &eventSink{}
	ts := httptest.NewServer(sink)
	defer ts.Close()
	c := newClient(t, client.Config{BaseURL: ts.URL})
	b := c.NewBatcher(client.BatcherConfig{MaxEvents: 1000, Interval: time.Hour})
	if err := b.Add(client.Event{Type: "click", AdID: "a1"}); err == nil {
		t.Fatal("Add of a click without impression id: no error")
	}
	for i := range 4 {
		_ = b.Add(imp(i))
	}
	if err := b.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	_ = b.Add(imp(4))
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got := sink.sizes(); fmt.Sprint(got) != "[4 1]" {
		t.Fatalf("batches %v, want [4 1]", got)
	}
}

// TestBatcherConcurrent adds from many goroutines and checks every event is sent once.
func TestBatcherConcurrent(t *testing.T) {
	sink := &eventSink{}
	ts := httptest.NewServer(sink)
	defer ts.Close()
	c := newClient(t, client.Config{BaseURL: ts.URL})
	b := c.NewBatcher(client.BatcherConfig{MaxEvents: 64, Interval: 5 * time.Millisecond, MaxInFlight: 3})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				if err := b.Add(imp(g*1000 + i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for _, batch := range sink.batches {
		if len(batch) > 64 {
			t.Errorf("batch of %d events, want at most 64", len(batch))
		}
		for _, id := range batch {
			if seen[id] {
				t.Errorf("%s sent twice", id)
			}
			seen[id] = true
		}
	}
	if len(seen) != 4000 {
		t.Fatalf("%d events sent, want 4000", len(seen))
	}
}

// TestBatcherErrors: without OnFlush, Close returns the errors of failed flushes.
func TestBatcherErrors(t *testing.T) {
	ts := httptest.NewServer(&eventSink{status: 400})
	defer ts.Close()
	c := newClient(t, client.Config{BaseURL: ts.URL})
	b := c.NewBatcher(client.BatcherConfig{MaxEvents: 2, Interval: time.Hour})
	for i := range 3 {
		_ = b.Add(imp(i))
	}
	err := b.Close()
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != 400 {
		t.Fatalf("Close: %v, want the flushes' 400", err)
	}
}
