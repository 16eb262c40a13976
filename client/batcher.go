package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrClosed is returned by Add and Flush after Close.
var ErrClosed = errors.New("adpulse client: batcher closed")

// BatcherConfig configures a Batcher. Zero values take the defaults.
type BatcherConfig struct {
	// MaxEvents flushes the buffer when it holds this many events (default 1000).
	MaxEvents int
	// Interval flushes what is buffered at least this often (default 1s), so an event waits
	// at most about Interval before it is sent.
	Interval time.Duration
	// FlushTimeout bounds one flush, retries included (default 30s).
	FlushTimeout time.Duration
	// MaxInFlight bounds the flushes running at once (default 2). When all are busy, the Add
	// that fills the buffer waits for one to finish: memory stays bounded when the server is
	// slow or down.
	MaxInFlight int
	// OnFlush, if set, is called after every flush with the events sent, the server's
	// Result (EventError.Index is into events) and the error, if any. It runs on the
	// flushing goroutine and must not call the Batcher. Without it, flush errors are kept
	// and returned by Close.
	OnFlush func(events []Event, res Result, err error)
}

// Batcher buffers events and sends them with Client.SendEvents when MaxEvents are buffered,
// every Interval, on Flush and on Close. It is safe for concurrent use.
//
// A flush that fails after its retries is not retried by the Batcher; OnFlush sees the events,
// and sending them again later is safe (the server deduplicates them).
type Batcher struct {
	c   *Client
	cfg BatcherConfig
	sem chan struct{} // one token per flush in flight

	mu     sync.Mutex
	buf    []Event
	closed bool
	errs   []error        // flush errors when there is no OnFlush; the first maxKeptErrors
	wg     sync.WaitGroup // flushes started and not finished; Add is called under mu

	stop       chan struct{}
	tickerDone chan struct{}
}

const maxKeptErrors = 16

// NewBatcher returns a Batcher sending with c. Close it to send what is left.
func (c *Client) NewBatcher(cfg BatcherConfig) *Batcher {
	cfg.MaxEvents = orDefault(cfg.MaxEvents, 1000)
	cfg.Interval = orDefault(cfg.Interval, time.Second)
	cfg.FlushTimeout = orDefault(cfg.FlushTimeout, 30*time.Second)
	cfg.MaxInFlight = orDefault(cfg.MaxInFlight, 2)
	b := &Batcher{
		c:          c,
		cfg:        cfg,
		sem:        make(chan struct{}, max(cfg.MaxInFlight, 1)),
		stop:       make(chan struct{}),
		tickerDone: make(chan struct{}),
	}
	go b.tick()
	return b
}

// Add buffers ev. It returns at once with a *FieldError for an event SendEvents would refuse,
// and ErrClosed after Close. The Add that fills the buffer starts a flush in the background,
// waiting first if MaxInFlight flushes are already running.
func (b *Batcher) Add(ev Event) error {
	if err := ev.Validate(); err != nil {
		return err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	b.buf = append(b.buf, ev)
	var batch []Event
	if len(b.buf) >= b.cfg.MaxEvents {
		batch = b.take()
	}
	b.mu.Unlock()
	if batch != nil {
		b.sem <- struct{}{}
		go b.flush(batch, false)
	}
	return nil
}

// take removes the buffered events for one flush and counts the flush as started. b.mu held.
func (b *Batcher) take() []Event {
	batch := b.buf
	b.buf = make([]Event, 0, b.cfg.MaxEvents)
	b.wg.Add(1)
	return batch
}

// flush sends batch; the caller holds a sem token and counted the flush in wg. Without
// OnFlush, an error nobody is waiting for is kept for Close.
func (b *Batcher) flush(batch []Event, waited bool) error {
	defer func() { <-b.sem; b.wg.Done() }()
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.FlushTimeout)
	defer cancel()
	res, err := b.c.SendEvents(ctx, batch)
	if err != nil {
		err = fmt.Errorf("flush %d events: %w", len(batch), err)
	}
	if b.cfg.OnFlush != nil {
		b.cfg.OnFlush(batch, res, err)
	} else if err != nil && !waited {
		b.mu.Lock()
		if len(b.errs) < maxKeptErrors {
			b.errs = append(b.errs, err)
		}
		b.mu.Unlock()
	}
	return err
}

func (b *Batcher) tick() {
	defer close(b.tickerDone)
	t := time.NewTicker(b.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			b.mu.Lock()
			var batch []Event
			if len(b.buf) > 0 {
				batch = b.take()
			}
			b.mu.Unlock()
			if batch != nil {
				b.sem <- struct{}{}
				go b.flush(batch, false)
			}
		}
	}
}

// Flush sends what is buffered now and returns the error of that send. Flushes started
// earlier may still be running.
func (b *Batcher) Flush(ctx context.Context) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	if len(b.buf) == 0 {
		b.mu.Unlock()
		return nil
	}
	batch := b.take()
	b.mu.Unlock()
	select {
	case b.sem <- struct{}{}:
	case <-ctx.Done():
		// The events are taken: send them in the background rather than lose them.
		go func() { b.sem <- struct{}{}; b.flush(batch, false) }()
		return ctx.Err()
	}
	return b.flush(batch, true)
}

// Close stops the interval flushes, sends what is buffered, waits for every flush in flight
// and returns the errors of flushes that failed (when there is no OnFlush to report them to).
// Add and Flush fail with ErrClosed after it. Close is idempotent.
func (b *Batcher) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	var batch []Event
	if len(b.buf) > 0 {
		batch = b.take()
	}
	b.mu.Unlock()
	close(b.stop)
	<-b.tickerDone
	if batch != nil {
		b.sem <- struct{}{}
		b.flush(batch, false) // its error is kept in errs or reported to OnFlush
	}
	b.wg.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	return errors.Join(b.errs...)
}
