package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeOptions is a short run with plenty of clicks, duplicates and interactions.
func fakeOptions(target string, seed uint64) Options {
	o := DefaultOptions()
	o.Target, o.AdminKey, o.Setup, o.Seed = target, testAdminKey, true, seed
	o.Layout = testLayout
	// 800 requests at 1000/s: a count, not a time, so a loaded machine sends the same run.
	o.Rate, o.Duration, o.MaxInFlight, o.Timeout = 1000, 800*time.Millisecond, 64, 5*time.Second
	o.Requests = 800
	o.CatchUpTimeout = 1500 * time.Millisecond // fake counts at once; failing checks wait this long
	o.Model.CTR, o.Model.CartRate, o.Model.DoubleClick, o.Model.RetryShare = 0.3, 0.5, 0.2, 0.05
	o.Model.BotShare = 0.1
	o.Model.Batch = 40
	return o
}

func runFake(t *testing.T, f *fakeServer, mutate func(*Options)) *Report {
	t.Helper()
	o := fakeOptions(f.start(), testSeed(t))
	if mutate != nil {
		mutate(&o)
	}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	rep.WriteText(&buf)
	t.Logf("report:\n%s", buf.String())
	return rep
}

// TestRunAgainstFake: against a correct server, every variant of the load checks out, and
// the ledger saw every kind of event.
func TestRunAgainstFake(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		flaky  float64
		mutate func(*Options)
		// fewBatches: the run sends only a handful of /events batches, too few to be sure
		// one of them carries a retried or double-clicked line.
		fewBatches bool
	}{
		{"server signs tokens", 0, nil, false},
		{"local signing", 0, func(o *Options) { o.ClickSecret = testSecret; o.Model.ExpiredShare = 0.05 }, false},
		// A fixed number of requests, not a time: a loaded machine must not make the run too
		// small to hold every kind of event.
		{"closed model", 0, func(o *Options) { o.Rate, o.Concurrency, o.Duration, o.Requests = 0, 8, time.Minute, 600 }, true},
		{"flaky server", 0.05, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeServer(t, 1)
			f.flaky = tc.flaky
			rep := runFake(t, f, tc.mutate)
			if !rep.OK || rep.Check.Status != CheckOK {
				t.Fatalf("check %s: %s %v", rep.Check.Status, rep.Check.Reason, rep.Check.Problems)
			}
			tr := rep.Truth
			if tr.Impressions == 0 || tr.Clicks == 0 || tr.InvalidClicks == 0 || tr.AddToCart == 0 || tr.BotImpressions == 0 {
				t.Errorf("acknowledged %+v: want some of every kind", tr)
			}
			if rep.Events.Accepted == 0 || rep.Events.Duplicates == 0 && !tc.fewBatches {
				t.Errorf("events %+v: want accepted lines and duplicates", rep.Events)
			}
			if tc.flaky > 0 && (tr.Uncertain == 0 || rep.Errors["503"] == 0) {
				t.Errorf("flaky server: %d uncertain keys, %d 503s; want some", tr.Uncertain, rep.Errors["503"])
			}
			if tc.flaky == 0 && len(rep.Errors) > 0 {
				t.Errorf("errors %v", rep.Errors)
			}
			if len(rep.Check.Levels) != 3 || len(rep.Check.Top) != 6 {
				t.Errorf("compared %d levels and %d top lists, want 3 and 6", len(rep.Check.Levels), len(rep.Check.Top))
			}
			var kinds []string
			for _, k := range rep.Kinds {
				kinds = append(kinds, k.Kind)
				if k.Latency.P50 <= 0 || k.Latency.Max < k.Latency.P99 || k.Histogram == "" {
					t.Errorf("%s latency %+v", k.Kind, k.Latency)
				}
			}
			if len(kinds) < 4 {
				t.Errorf("request kinds %v", kinds)
			}
		})
	}
}

func TestCheckDetectsLostEvent(t *testing.T) {
	t.Parallel()
	f := newFakeServer(t, 1)
	f.loseNth = 50
	rep := runFake(t, f, nil)
	if rep.OK || rep.Check.Status != CheckFailed {
		t.Fatalf("a lost event passed the check: %+v", rep.Check)
	}
	if rep.Check.Lost != 1 || rep.Check.DoubleCounted != 0 {
		t.Errorf("lost %d, double-counted %d; want 1 and 0", rep.Check.Lost, rep.Check.DoubleCounted)
	}
	for _, l := range rep.Check.Levels {
		if l.Lost != 1 || l.DoubleCounted != 0 {
			t.Errorf("level %+v: want exactly 1 lost", l)
		}
	}
}

func TestCheckDetectsDoubleCount(t *testing.T) {
	t.Parallel()
	f := newFakeServer(t, 1)
	f.doubleNth = 50
	rep := runFake(t, f, nil)
	if rep.OK || rep.Check.Status != CheckFailed {
		t.Fatalf("a double count passed the check: %+v", rep.Check)
	}
	if rep.Check.Lost != 0 || rep.Check.DoubleCounted != 1 {
		t.Errorf("lost %d, double-counted %d; want 0 and 1", rep.Check.Lost, rep.Check.DoubleCounted)
	}
}

func TestCheckDetectsWrongMinute(t *testing.T) {
	t.Parallel()
	f := newFakeServer(t, 1)
	f.shiftNth = 50
	rep := runFake(t, f, nil)
	if rep.OK || rep.Check.Status != CheckFailed {
		t.Fatalf("an event counted a minute late passed the check: %+v", rep.Check)
	}
	var bucket int64
	for _, l := range rep.Check.Levels {
		bucket += l.BucketDouble + l.BucketLost + l.Lost
	}
	if bucket == 0 {
		t.Errorf("levels %+v: no bucket reported", rep.Check.Levels)
	}
}

func TestIngestFalseDuplicate(t *testing.T) {
	t.Parallel()
	f := newFakeServer(t, 1)
	f.falseDupNth = 20
	rep := runFake(t, f, func(o *Options) { o.Model.RetryShare, o.Model.DoubleClick = 0, 0 })
	if rep.OK || rep.Ingest.FalseDuplicates != 1 || rep.Ingest.DoubleAccepts != 0 {
		t.Fatalf("ok %v, ingest %+v; want one false duplicate", rep.OK, rep.Ingest)
	}
}

func TestCheckWithoutMetrics(t *testing.T) {
	t.Parallel()
	f := newFakeServer(t, 1)
	f.metrics = false
	rep := runFake(t, f, nil)
	if !rep.OK || rep.Check.Status != CheckSkipped || !strings.Contains(rep.Check.Reason, "404") {
		t.Fatalf("ok %v, check %+v; want skipped for the 404", rep.OK, rep.Check)
	}
	o := fakeOptions(f.start(), 1)
	o.Check = CheckOn
	if _, err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("--check on without /metrics: %v", err)
	}
}

// TestCheckMetricsError: a failing /metrics does not stop the load, and fails the run.
func TestCheckMetricsError(t *testing.T) {
	t.Parallel()
	f := newFakeServer(t, 1)
	f.metricsFail = true
	rep := runFake(t, f, func(o *Options) { o.Duration = 300 * time.Millisecond })
	if rep.OK || rep.Check.Status != CheckError || rep.Requests == 0 || !strings.Contains(rep.Check.Reason, "500") {
		t.Fatalf("ok %v, %d requests, check %+v; want the load run and the check in error", rep.OK, rep.Requests, rep.Check)
	}
}

// TestBaseline: a second run on the same ads and minutes adds the first run's counts to its
// expectation instead of calling them double counts.
func TestBaseline(t *testing.T) {
	t.Parallel()
	f := newFakeServer(t, 1)
	url := f.start()
	for i, runID := range []string{"first", "second"} {
		o := fakeOptions(url, uint64(i+1))
		o.RunID, o.Setup, o.Duration = runID, i == 0, 500*time.Millisecond
		rep, err := Run(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK || rep.Check.Status != CheckOK || rep.Check.Baseline != (i == 1) {
			t.Fatalf("run %s: ok %v, check %+v", runID, rep.OK, rep.Check)
		}
	}
}

func TestRefusesRemoteTarget(t *testing.T) {
	o := fakeOptions("http://192.0.2.1:8080", 1)
	_, err := Run(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("remote target: %v", err)
	}
}

func TestCommand(t *testing.T) {
	t.Parallel()
	f := newFakeServer(t, 1)
	url := f.start()
	dir := t.TempDir()
	jsonPath := filepath.Join(dir, "report.json")
	env := map[string]string{"ADPULSE_ADMIN_KEY": testAdminKey, "ADPULSE_DURATION": "700ms"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	args := []string{"--target", url, "--setup", "--ads", "50", "--campaigns", "5", "--advertisers", "2",
		"--rate", "800", "--seed", "7", "--json", jsonPath, "--progress-every", "200ms", "--catch-up-timeout", "1s"}
	var stdout, stderr bytes.Buffer
	if err := Command(context.Background(), args, &stdout, &stderr, lookup); err != nil {
		t.Fatalf("%v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"seed 7", "open model: 800 requests/s for 0.7s", "pixel", "events", "check: OK"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(stderr.String(), "replay with --seed 7") || !strings.Contains(stderr.String(), "done") {
		t.Errorf("stderr lacks the seed or progress:\n%s", stderr.String())
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil || rep.Seed != 7 || !rep.OK || rep.Check.Status != CheckOK {
		t.Fatalf("json report: %v seed %d ok %v", err, rep.Seed, rep.OK)
	}

	// A failed check is an error (the exit status of `adpulse loadgen`).
	f2 := newFakeServer(t, 1)
	f2.doubleNth = 10
	args[1] = f2.start()
	stdout.Reset()
	err = Command(context.Background(), args, &stdout, &stderr, lookup)
	if err == nil || !strings.Contains(err.Error(), "double-counted 1") {
		t.Fatalf("double count: %v\n%s", err, stdout.String())
	}

	for _, bad := range [][]string{{"--check", "maybe"}, {"--rate", "-1"}, {"extra"}} {
		if err := Command(context.Background(), append([]string{"--target", url}, bad...), &stdout, &stderr, lookup); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}
}
