package loadgen

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/config"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog/locallog"
	"github.com/adpulse/adpulse/internal/server"
)

// startAdpulse runs a full embedded adpulse on a loopback port (as internal/server's tests
// do) and returns its base URL, its data dir and a func that stops it (also run at cleanup).
func startAdpulse(t *testing.T) (base, dataDir string, stop func()) {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Listen = "127.0.0.1:0"
	cfg.OpsListen = "127.0.0.1:0"
	cfg.AdminKey = testAdminKey
	cfg.ClickSecret = testSecret
	app, err := server.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx) }()
	select {
	case <-app.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("adpulse stopped: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("adpulse not ready after 30s")
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("adpulse: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return "http://" + app.APIAddr(), cfg.DataDir, stop
}

// logWriter sends progress lines to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestAgainstAdpulse runs two short loads against a real in-process adpulse (the server
// signing tokens, then local signing), then stops it and counts its event log the way the
// aggregator does: the log must hold exactly what the ledger says was acknowledged, minute
// by minute. /metrics is compared too when the server serves it.
func TestAgainstAdpulse(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a full adpulse")
	}
	base, dataDir, stop := startAdpulse(t)
	seed := testSeed(t)
	lay := Layout{Ads: 300, Campaigns: 30, Advertisers: 5, Prefix: "lg"}
	var exps []*expected
	var eventDups int64
	for i, runID := range []string{"srvsign", "localsign"} {
		o := DefaultOptions()
		o.Target, o.AdminKey, o.Layout, o.Seed, o.RunID = base, testAdminKey, lay, seed+uint64(i), runID
		o.Setup = i == 0
		if runID == "localsign" {
			o.ClickSecret = testSecret
			o.Model.ExpiredShare = 0.05
		}
		o.Rate, o.Duration, o.MaxInFlight = 250, 2*time.Second, 64
		o.Requests = 500 // a count, not a time: a loaded machine sends the same run
		o.Model.CTR, o.Model.DoubleClick, o.Model.RetryShare, o.Model.BotShare = 0.2, 0.3, 0.1, 0.1
		o.Model.WebShare, o.Model.AppShare, o.Model.Batch = 0.4, 0.2, 25
		o.CatchUpTimeout = 10 * time.Second
		o.Progress, o.ProgressEvery = logWriter{t}, time.Second
		r, err := newRunner(o)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if err := r.prepare(ctx); err != nil {
			t.Fatal(err)
		}
		r.traffic(ctx)
		r.check(ctx)
		rep := r.report()
		var buf bytes.Buffer
		rep.WriteText(&buf)
		t.Logf("run %s:\n%s", runID, buf.String())

		tr := rep.Truth
		if rep.Requests < 400 || len(rep.Errors) > 0 {
			t.Errorf("run %s: %d requests, errors %v", runID, rep.Requests, rep.Errors)
		}
		if tr.Impressions == 0 || tr.Clicks == 0 || tr.InvalidClicks == 0 || tr.AddToCart == 0 || tr.BotImpressions == 0 {
			t.Errorf("run %s: acknowledged %+v: want some of every kind", runID, tr)
		}
		if rep.Events.Accepted == 0 || rep.Events.Rejected != 0 {
			t.Errorf("run %s: events %+v: want accepted lines and no rejections", runID, rep.Events)
		}
		eventDups += rep.Events.Duplicates
		if rep.Ingest != (IngestReport{}) {
			t.Errorf("run %s: the server's /events answers disagree with the ledger: %+v", runID, rep.Ingest)
		}
		switch rep.Check.Status {
		case CheckSkipped:
			t.Logf("run %s: /metrics comparison skipped: %s", runID, rep.Check.Reason)
		case CheckOK:
		default:
			t.Errorf("run %s: check %s: %s %v", runID, rep.Check.Status, rep.Check.Reason, rep.Check.Problems)
		}
		e, _ := buildExpected(r.ledger, lay)
		exps = append(exps, e)
	}

	if eventDups == 0 {
		t.Error("no /events line was answered as a duplicate in either run")
	}

	stop()
	obs := countLog(t, filepath.Join(dataDir, "log"))
	e := mergeExpected(exps)
	e.start--
	e.end++
	var p problems
	for lv := range numLevels {
		ids := e.ids(lv)
		for id := range obs[lv] {
			if e.levels[lv][id] == nil {
				ids = append(ids, id)
			}
		}
		if r := compareLevel(e, lv, ids, obs[lv], &p); !r.ok() {
			t.Errorf("event log vs ledger at %v level: %+v", lv, r)
		}
	}
	for _, s := range p.list {
		t.Log(s)
	}
}

// countLog counts a stopped server's event log the way the aggregator does.
func countLog(t *testing.T, dir string) [numLevels]observed {
	t.Helper()
	l, err := locallog.Open(locallog.Options{Dir: dir, Retention: -1})
	if err != nil {
		t.Fatalf("open event log: %v", err)
	}
	defer l.Close()
	var obs [numLevels]observed
	for i := range obs {
		obs[i] = observed{}
	}
	ctx := context.Background()
	for p := range l.Partitions() {
		start, end, err := l.Offsets(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		for off := start; off < end; {
			msgs, err := l.Read(ctx, p, off, 1<<20)
			if err != nil || len(msgs) == 0 {
				t.Fatalf("read partition %d at %d: %v (%d messages)", p, off, err, len(msgs))
			}
			for _, m := range msgs {
				off = m.Offset + 1
				var e event.Event
				if err := e.Decode(m.Value); err != nil {
					t.Fatalf("partition %d offset %d: %v", p, m.Offset, err)
				}
				var metric Metric
				switch {
				case e.Type == event.TypeImpression && e.Invalid == event.ReasonNone:
					metric = MetricImpressions
				case e.Type == event.TypeClick && e.Invalid == event.ReasonNone:
					metric = MetricClicks
				case e.Type == event.TypeClick:
					metric = MetricInvalidClicks
				case e.Type == event.TypeInteraction && e.Name == "add_to_cart":
					metric = MetricAddToCart
				case e.Type == event.TypeInteraction && e.Name == "order":
					metric = MetricOrder
				default:
					continue
				}
				minute := floorDiv(e.Time, 60_000_000)
				for lv, id := range [numLevels]string{e.AdID, e.CampaignID, e.AdvertiserID} {
					mins := obs[lv][id]
					if mins == nil {
						mins = map[int64]*counts{}
						obs[lv][id] = mins
					}
					c := mins[minute]
					if c == nil {
						c = new(counts)
						mins[minute] = c
					}
					c[metric]++
				}
			}
		}
	}
	return obs
}

func mergeExpected(es []*expected) *expected {
	out := &expected{start: 1 << 62, end: -1 << 62}
	for i := range out.levels {
		out.levels[i] = map[string]*series{}
	}
	for _, e := range es {
		out.start, out.end = min(out.start, e.start), max(out.end, e.end)
		for lv := range e.levels {
			for id, s := range e.levels[lv] {
				agg := out.levels[lv][id]
				if agg == nil {
					agg = newSeries()
					out.levels[lv][id] = agg
				}
				agg.addSeries(s)
			}
		}
	}
	return out
}
