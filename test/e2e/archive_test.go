package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/archive"
)

// waitArchived waits until the process's archive has every event of the log in a file:
// every partition's archive lag is 0.
func waitArchived(t *testing.T, srv *server, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		lags, behind := 0, 0.0
		for k, v := range opsMetricValues(t, srv) {
			if strings.HasPrefix(k, "adpulse_archive_lag_messages{") {
				lags++
				behind += v
			}
		}
		if lags > 0 && behind == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the archive is still %v events behind the log after %v", behind, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// readArchive reads every row of the archive in dir received within [from, to] back as
// events by key, like readLog.
func readArchive(t *testing.T, dir string, from, to time.Time) (byKey map[string][]logEntry, total int) {
	t.Helper()
	ctx := context.Background()
	tg, err := archive.NewDirTarget(dir)
	if err != nil {
		t.Fatal(err)
	}
	files, err := archive.ListFiles(ctx, tg, from, to)
	if err != nil {
		t.Fatal(err)
	}
	byKey = map[string][]logEntry{}
	for _, f := range files {
		err := archive.ReadFile(ctx, tg, f.Key, func(r *archive.Row) error {
			e, err := r.Event()
			if err != nil {
				return err
			}
			byKey[e.Key()] = append(byKey[e.Key()], logEntry{ev: e, partition: int(r.Partition), offset: r.Offset})
			total++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return byKey, total
}

// sameEntries reports the log entries the archive does not hold identically (and the
// archive's extra ones): the archive must be the log, event for event.
func sameEntries(logByKey, archByKey map[string][]logEntry) (diffs []string) {
	type pos struct {
		p   int
		off int64
	}
	arch := map[pos]logEntry{}
	for _, es := range archByKey {
		for _, e := range es {
			arch[pos{e.partition, e.offset}] = e
		}
	}
	for k, es := range logByKey {
		for _, e := range es {
			a, ok := arch[pos{e.partition, e.offset}]
			switch {
			case !ok:
				diffs = append(diffs, "not archived: "+k)
			case a.ev != e.ev:
				diffs = append(diffs, "archived differently: "+k)
			}
			delete(arch, pos{e.partition, e.offset})
		}
	}
	for _, a := range arch {
		diffs = append(diffs, "archived but not in the log: "+a.ev.Key())
	}
	return diffs
}
