// Package bulkimport moves rows of analytical data (NDJSON, CSV and Parquet files, locally
// or on S3, and the result of a SQL query on PostgreSQL, MySQL or Trino) into adpulse as
// events, through POST /events of a running server with the public Go client.
//
// Guarantees:
//   - Same validation and idempotency as any client: every row becomes one line of
//     POST /events, so the server's rules apply unchanged and each event counts once by its
//     idempotency key (impression_id for impressions and clicks, event_id otherwise; the
//     client refuses a row without it).
//   - Resumable, exactly once: after every batch the server acknowledged, the number of rows
//     done (a prefix of the source, which yields rows in a fixed order) is written to the
//     checkpoint file atomically (temporary file, fsync, rename). A crash or an interrupt
//     loses at most the batches in flight; a resumed import sends them again and the server
//     answers them as duplicates. So every row is counted once, whatever happened.
//   - Every rejected row is counted and reported with its row number and field; the import
//     goes on with the other rows, as POST /events does with the other lines.
//
// Batches are sent by several workers at once; the checkpoint only moves over batches that
// are all acknowledged, in order, so it never covers a batch still in flight.
package bulkimport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/adpulse/adpulse/client"
	"github.com/adpulse/adpulse/internal/progress"
)

// Options configure Run.
type Options struct {
	Source Source
	// Client sends the events; nil only with DryRun.
	Client *client.Client
	// DryRun reads and validates every row without sending anything (and without a
	// checkpoint). It checks what the client can check offline, not the catalog.
	DryRun bool
	// BatchSize is the rows per POST /events (default 5000); Parallel the requests in flight
	// (default 4).
	BatchSize, Parallel int
	// Checkpoint is the file recording the rows done ("" for none). Fingerprint names the
	// source and query; a checkpoint written for another fingerprint is refused.
	Checkpoint, Fingerprint string
	// Errors receives one line per rejected row, up to MaxErrors lines (default 100); every
	// rejected row is counted in the Summary.
	Errors    io.Writer
	MaxErrors int
	Progress  *progress.Reporter // optional
	Logger    *slog.Logger
	// afterCheckpoint, in tests, runs after each checkpoint write (to crash mid-import).
	afterCheckpoint func(rowsDone int64)
}

// Summary is what an import did.
type Summary struct {
	Rows       int64 // rows read by this run (after the checkpoint)
	Resumed    int64 // rows an earlier run had done, skipped
	Valid      int64 // dry run: rows that passed validation
	Accepted   int64 // events recorded by this run
	Duplicates int64 // events already recorded (sent before, or repeated in the source)
	Rejected   int64 // rows refused, by the import or by the server
	Elapsed    time.Duration
}

// RowsPerSecond is the import's rate.
func (s Summary) RowsPerSecond() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Rows) / s.Elapsed.Seconds()
}

// checkpoint is the file's content. The totals add up every run of the import.
type checkpoint struct {
	Fingerprint string    `json:"fingerprint"`
	RowsDone    int64     `json:"rows_done"`
	Accepted    int64     `json:"accepted"`
	Duplicates  int64     `json:"duplicates"`
	Rejected    int64     `json:"rejected"`
	UpdatedAt   time.Time `json:"updated_at"`
}

func loadCheckpoint(path, fingerprint string) (checkpoint, error) {
	cp := checkpoint{Fingerprint: fingerprint}
	if path == "" {
		return cp, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return cp, nil
	}
	if err != nil {
		return cp, err
	}
	var got checkpoint
	if err := json.Unmarshal(b, &got); err != nil {
		return cp, fmt.Errorf("checkpoint %s is damaged (%v): remove it to start over", path, err)
	}
	if got.Fingerprint != fingerprint {
		return cp, fmt.Errorf("checkpoint %s is for another import (%q): remove it or give another --checkpoint", path, got.Fingerprint)
	}
	if got.RowsDone < 0 {
		return cp, fmt.Errorf("checkpoint %s: negative rows_done", path)
	}
	return got, nil
}

// save writes cp to path atomically: a crash leaves the old or the new file, never a torn one.
func (cp checkpoint) save(path string) error {
	b, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// batch is a run of consecutive rows: the events to send and the rows already refused.
type batch struct {
	seq     int64
	lastRow int64
	events  []client.Event
	rows    []int64 // row number of each event
	bad     []RowError
	// filled by the sender
	res client.Result
}

// Run imports every row of o.Source after the checkpoint.
func Run(ctx context.Context, o Options) (Summary, error) {
	if o.BatchSize <= 0 {
		o.BatchSize = 5000
	}
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	if o.MaxErrors == 0 {
		o.MaxErrors = 100
	}
	if o.Errors == nil {
		o.Errors = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Client == nil && !o.DryRun {
		return Summary{}, errors.New("bulkimport: no client (and not a dry run)")
	}
	cpPath := o.Checkpoint
	if o.DryRun {
		cpPath = ""
	}
	cp, err := loadCheckpoint(cpPath, o.Fingerprint)
	if err != nil {
		return Summary{}, err
	}
	if cp.RowsDone > 0 {
		o.Logger.Info("resuming import from its checkpoint", "checkpoint", cpPath, "rows_done", cp.RowsDone)
	}
	start := time.Now()
	sum := Summary{Resumed: cp.RowsDone}
	skip := cp.RowsDone // the committer moves cp.RowsDone while the reader runs
	// stop ends the reader and the senders when the committer fails (a checkpoint that
	// cannot be written must not let the import run on unrecorded).
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(ctx)
	toSend := make(chan *batch, o.Parallel)
	sent := make(chan *batch, o.Parallel)

	// Reader: rows into batches.
	g.Go(func() error {
		defer close(toSend)
		var seq int64
		cur := &batch{}
		flush := func() error {
			if cur.lastRow == 0 {
				return nil
			}
			cur.seq = seq
			seq++
			select {
			case toSend <- cur:
			case <-gctx.Done():
				return gctx.Err()
			}
			cur = &batch{}
			return nil
		}
		err := o.Source.Rows(gctx, skip, func(num int64, rec Record, bad *RowError) error {
			if num <= skip {
				return nil // a source that does not skip by itself
			}
			cur.lastRow = num
			if bad == nil {
				ev, rerr := toEvent(rec)
				if rerr != nil {
					rerr.Row = num
					bad = rerr
				} else {
					cur.events = append(cur.events, ev)
					cur.rows = append(cur.rows, num)
				}
			}
			if bad != nil {
				cur.bad = append(cur.bad, *bad)
			}
			if len(cur.events)+len(cur.bad) >= o.BatchSize {
				return flush()
			}
			return nil
		})
		if err != nil {
			return err
		}
		return flush()
	})

	// Senders.
	var senders sync.WaitGroup
	for range o.Parallel {
		senders.Add(1)
		g.Go(func() error {
			defer senders.Done()
			for b := range toSend {
				if !o.DryRun && len(b.events) > 0 {
					res, err := o.Client.SendEvents(gctx, b.events)
					if err != nil {
						return fmt.Errorf("rows up to %d: %w", b.lastRow, err)
					}
					b.res = res
				}
				select {
				case sent <- b:
				case <-gctx.Done():
					return gctx.Err()
				}
			}
			return nil
		})
	}
	go func() { senders.Wait(); close(sent) }()

	// Committer: in order, count, report, checkpoint.
	printed := 0
	report := func(e RowError) {
		if printed < o.MaxErrors {
			fmt.Fprintln(o.Errors, e.Error())
		} else if printed == o.MaxErrors {
			fmt.Fprintf(o.Errors, "... more rejected rows are counted but not listed (--max-errors %d)\n", o.MaxErrors)
		}
		printed++
	}
	pending := map[int64]*batch{}
	var next int64
	var commitErr error
	for b := range sent {
		if commitErr != nil {
			continue // drain
		}
		pending[b.seq] = b
		for {
			b, ok := pending[next]
			if !ok {
				break
			}
			delete(pending, next)
			next++
			rows := b.lastRow - cp.RowsDone
			sum.Rows += rows
			errs := b.bad
			if o.DryRun {
				sum.Valid += int64(len(b.events))
			} else {
				sum.Accepted += int64(b.res.Accepted)
				sum.Duplicates += int64(b.res.Duplicates)
				for _, e := range b.res.Errors {
					msg := e.Message
					if e.Code != "" && e.Code != client.CodeInvalidArgument {
						msg = e.Code + ": " + msg
					}
					errs = append(errs, RowError{Row: b.rows[e.Index], Message: msg})
				}
				// The server may list fewer errors than it rejected; count what it said.
				if extra := b.res.Rejected - len(b.res.Errors); extra > 0 {
					sum.Rejected += int64(extra)
					cp.Rejected += int64(extra)
				}
			}
			sortRowErrors(errs)
			for _, e := range errs {
				report(e)
			}
			sum.Rejected += int64(len(errs))
			cp.RowsDone = b.lastRow
			cp.Accepted += int64(b.res.Accepted)
			cp.Duplicates += int64(b.res.Duplicates)
			cp.Rejected += int64(len(errs))
			if o.Progress != nil {
				done, _ := o.Source.Progress()
				o.Progress.Add(rows, done)
			}
			if cpPath != "" {
				cp.UpdatedAt = time.Now().UTC()
				if err := cp.save(cpPath); err != nil {
					commitErr = fmt.Errorf("write checkpoint: %w", err)
					stop()
					break
				}
				if o.afterCheckpoint != nil {
					o.afterCheckpoint(cp.RowsDone)
				}
			}
		}
	}
	err = g.Wait()
	if commitErr != nil {
		err = commitErr
	}
	sum.Elapsed = time.Since(start)
	if err != nil {
		return sum, fmt.Errorf("import stopped after row %d (the checkpoint; run again to resume): %w", cp.RowsDone, err)
	}
	return sum, nil
}

func sortRowErrors(errs []RowError) {
	// Few per batch; insertion sort keeps it allocation-free.
	for i := 1; i < len(errs); i++ {
		for j := i; j > 0 && errs[j].Row < errs[j-1].Row; j-- {
			errs[j], errs[j-1] = errs[j-1], errs[j]
		}
	}
}

// Open opens the source named by spec: a file path, s3://bucket/key, or a database URL
// (postgres://, mysql://, trino://) with a query.
func Open(ctx context.Context, spec, query string, format Format, s3 S3Options) (Source, error) {
	switch format {
	case "", FormatNDJSON, FormatCSV, FormatParquet:
	default:
		return nil, fmt.Errorf("--format %q: want ndjson, csv or parquet", format)
	}
	scheme, _, ok := strings.Cut(spec, "://")
	if !ok {
		if query != "" {
			return nil, errors.New("--query is for database sources only")
		}
		return openFile(spec, format)
	}
	u, err := parseURL(spec)
	if err != nil {
		return nil, err
	}
	switch strings.ToLower(scheme) {
	case "s3":
		if query != "" {
			return nil, errors.New("--query is for database sources only")
		}
		return openS3(ctx, u, format, s3)
	case "file":
		return openFile(u.Path, format)
	}
	return openSQL(ctx, u, spec, query)
}
