package bulkimport_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	. "github.com/adpulse/adpulse/internal/bulkimport"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/adpulse/adpulse/client"
	"github.com/adpulse/adpulse/internal/server/servertest"
)

// startServer runs a full embedded adpulse on a loopback port with one advertiser, campaign
// and ad ("ad-1"), and returns a client with the admin key.
func startServer(t *testing.T) *client.Client {
	t.Helper()
	srv := servertest.Start(t, nil)
	ctx := context.Background()
	c, err := client.New(client.Config{BaseURL: srv.URL, Key: servertest.AdminKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutAdvertiser(ctx, "adv-1", client.AdvertiserInput{Name: "Acme", Timezone: "UTC"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutCampaign(ctx, "cmp-1", client.CampaignInput{AdvertiserID: "adv-1", Name: "c", Status: "active", CPCBidMicros: 1000}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutAd(ctx, "ad-1", client.AdInput{CampaignID: "cmp-1", LandingURL: "https://shop.example/p"}); err != nil {
		t.Fatal(err)
	}
	return c
}

// waitCounts polls /metrics until ad-1's totals are want (impressions, clicks), or fails.
func waitCounts(t *testing.T, c *client.Client, impressions, clicks int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var got client.Point
	for time.Now().Before(deadline) {
		m, err := c.Metrics(context.Background(), client.MetricsQuery{AdIDs: []string{"ad-1"}, Interval: time.Hour,
			Start: time.Now().Add(-3 * time.Hour), End: time.Now().Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		got = m.Series[0].Totals()
		if got.Impressions == impressions && got.Clicks == clicks {
			return
		}
		if got.Impressions > impressions || got.Clicks > clicks {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("ad-1 counts impressions=%d clicks=%d, want %d and %d", got.Impressions, got.Clicks, impressions, clicks)
}

// testRows are n impressions and n/2 clicks of ad-1 with times in the last hour.
func testRows(n int) []Record {
	base := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	var out []Record
	for i := range n {
		ts := base.Add(time.Duration(i) * time.Millisecond).Format(time.RFC3339Nano)
		out = append(out, Record{"type": "impression", "ad_id": "ad-1", "impression_id": fmt.Sprintf("imp-%d", i), "event_time": ts, "user_id": "u1"})
		if i%2 == 0 {
			out = append(out, Record{"type": "click", "ad_id": "ad-1", "impression_id": fmt.Sprintf("imp-%d", i), "event_time": ts, "cpc_micros": "500"})
		}
	}
	return out
}

func writeNDJSON(t *testing.T, path string, rows []Record) {
	t.Helper()
	var b bytes.Buffer
	for _, r := range rows {
		b.WriteString("{")
		first := true
		for _, c := range Columns {
			if v, ok := r[c]; ok {
				if !first {
					b.WriteString(",")
				}
				first = false
				if c == "cpc_micros" {
					fmt.Fprintf(&b, "%q:%s", c, v)
				} else {
					fmt.Fprintf(&b, "%q:%q", c, v)
				}
			}
		}
		b.WriteString("}\n")
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeCSV(t *testing.T, path string, rows []Record) {
	t.Helper()
	var b bytes.Buffer
	b.WriteString(strings.Join(Columns, ",") + "\n")
	for _, r := range rows {
		vals := make([]string, len(Columns))
		for i, c := range Columns {
			vals[i] = r[c]
		}
		b.WriteString(strings.Join(vals, ",") + "\n")
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// parquetRow is how a data warehouse would write the events: optional strings, an int64
// price and a real timestamp.
type parquetRow struct {
	Type         string    `parquet:"type"`
	AdID         string    `parquet:"ad_id"`
	ImpressionID string    `parquet:"impression_id,optional"`
	EventID      string    `parquet:"event_id,optional"`
	UserID       string    `parquet:"user_id,optional"`
	EventTime    time.Time `parquet:"event_time,timestamp(microsecond)"`
	CPCMicros    int64     `parquet:"cpc_micros,optional"`
}

func parquetBytes(t *testing.T, rows []Record) []byte {
	t.Helper()
	var b bytes.Buffer
	w := parquet.NewGenericWriter[parquetRow](&b)
	for _, r := range rows {
		ts, err := time.Parse(time.RFC3339Nano, r["event_time"])
		if err != nil {
			t.Fatal(err)
		}
		var cpc int64
		fmt.Sscan(r["cpc_micros"], &cpc)
		if _, err := w.Write([]parquetRow{{Type: r["type"], AdID: r["ad_id"], ImpressionID: r["impression_id"], EventID: r["event_id"],
			UserID: r["user_id"], EventTime: ts, CPCMicros: cpc}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func runImport(t *testing.T, ctx context.Context, c *client.Client, src Source, cp string, errs io.Writer) (Summary, error) {
	t.Helper()
	defer src.Close()
	return Run(ctx, Options{Source: src, Client: c, BatchSize: 100, Parallel: 3, Checkpoint: cp, Fingerprint: "test", Errors: errs})
}

// Every format imports every row once; importing the same file again records nothing new.
func TestImportFormats(t *testing.T) {
	c := startServer(t)
	dir := t.TempDir()
	rows := testRows(300) // 450 rows: 300 impressions, 150 clicks
	// The same events in three formats: the second and third imports are all duplicates.
	writeNDJSON(t, filepath.Join(dir, "e.ndjson"), rows)
	writeCSV(t, filepath.Join(dir, "e.csv"), rows)
	if err := os.WriteFile(filepath.Join(dir, "e.parquet"), parquetBytes(t, rows), 0o644); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"e.ndjson", "e.csv", "e.parquet"} {
		src, err := Open(context.Background(), filepath.Join(dir, name), "", "", S3Options{})
		if err != nil {
			t.Fatal(err)
		}
		sum, err := runImport(t, context.Background(), c, src, "", io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		wantAcc := int64(450)
		if i > 0 {
			wantAcc = 0
		}
		if sum.Rows != 450 || sum.Accepted != wantAcc || sum.Accepted+sum.Duplicates != 450 || sum.Rejected != 0 {
			t.Fatalf("%s: summary %+v", name, sum)
		}
	}
	waitCounts(t, c, 300, 150)
}

// Bad rows are reported with their row number and field, and the good rows still go in.
func TestImportRowErrors(t *testing.T) {
	c := startServer(t)
	dir := t.TempDir()
	now := time.Now().UTC().Format(time.RFC3339)
	lines := strings.Join([]string{
		`{"type":"impression","ad_id":"ad-1","impression_id":"ok-1","event_time":"` + now + `"}`,
		`{"type":"impression","ad_id":"ad-1"}`,                                      // row 2: no idempotency key
		`not json`,                                                                  // row 3
		`{"type":"impression","ad_id":"no-such-ad","impression_id":"x1"}`,           // row 4: the server's verdict
		`{"type":"click","ad_id":"ad-1","impression_id":"ok-1","cpc_micros":"abc"}`, // row 5
		``, // blank lines are not rows
		`{"type":"impression","ad_id":"ad-1","impression_id":"ok-2","event_time":"yesterday"}`, // row 6
		`{"type":"impression","ad_id":"ad-1","impression_id":"ok-3"}`,
		`{"type":"impression","ad_id":"ad-1","impression_id":"ok-4","user_id":["a"]}`, // row 8
	}, "\n")
	path := filepath.Join(dir, "bad.ndjson")
	if err := os.WriteFile(path, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := Open(context.Background(), path, "", "", S3Options{})
	if err != nil {
		t.Fatal(err)
	}
	var errs bytes.Buffer
	sum, err := runImport(t, context.Background(), c, src, "", &errs)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Rows != 8 || sum.Accepted != 2 || sum.Rejected != 6 {
		t.Fatalf("summary %+v\n%s", sum, errs.String())
	}
	for _, want := range []string{"row 2: impression_id:", "row 3: not a JSON object", "row 4: not_found:", "row 5: cpc_micros: must be an integer",
		"row 6: event_time:", "row 8: user_id: must be a string or a number"} {
		if !strings.Contains(errs.String(), want) {
			t.Errorf("errors lack %q:\n%s", want, errs.String())
		}
	}
}

// An import interrupted again and again, and one whose last checkpoint write was lost (a
// crash after the server acknowledged a batch), still counts every row exactly once.
func TestImportInterruptAndResume(t *testing.T) {
	c := startServer(t)
	dir := t.TempDir()
	rows := testRows(1000) // 1500 rows
	path := filepath.Join(dir, "e.ndjson")
	writeNDJSON(t, path, rows)
	cp := filepath.Join(dir, "import.checkpoint")

	var total Summary
	var saved []byte
	for run := 0; ; run++ {
		if run > 50 {
			t.Fatal("import never finished")
		}
		src, err := Open(context.Background(), path, "", "", S3Options{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		checkpoints := 0
		sum, err := Run(ctx, WithAfterCheckpoint(Options{Source: src, Client: c, BatchSize: 70, Parallel: 3, Checkpoint: cp, Fingerprint: "t"},
			func(int64) {
				checkpoints++
				if run == 1 && checkpoints == 1 {
					saved, _ = os.ReadFile(cp)
				}
				if checkpoints == 3 {
					cancel() // interrupt with batches in flight
				}
			}))
		src.Close()
		cancel()
		total.Accepted += sum.Accepted
		total.Duplicates += sum.Duplicates
		if run == 2 {
			// Crash: the checkpoint writes of run 1 after the first are lost; those batches were
			// acknowledged, so resending them must come back as duplicates.
			if err := os.WriteFile(cp, saved, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err == nil {
			break
		}
		if !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
	}
	// A batch the server recorded but whose answer the interrupt cut off is reported by no
	// run; the metrics are the proof that each row counted once.
	if total.Accepted > 1500 || total.Accepted+total.Duplicates < 1500 {
		t.Fatalf("accepted %d, duplicates %d over all runs, want at most 1500 accepted and 1500 in all", total.Accepted, total.Duplicates)
	}
	if total.Duplicates == 0 {
		t.Error("no duplicates: the lost checkpoint was not exercised")
	}
	waitCounts(t, c, 1000, 500)
}

func TestCheckpointForAnotherSourceRefused(t *testing.T) {
	dir := t.TempDir()
	cp := filepath.Join(dir, "c")
	if err := (Checkpoint{Fingerprint: "a", RowsDone: 5}).Save(cp); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCheckpoint(cp, "b"); err == nil || !strings.Contains(err.Error(), "another import") {
		t.Fatalf("err = %v", err)
	}
	if err := os.WriteFile(cp, []byte("{torn"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCheckpoint(cp, "a"); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("err = %v", err)
	}
}

// A dry run validates and counts, and sends nothing (it has no client at all).
func TestDryRun(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "e.csv")
	rows := append(testRows(10), Record{"type": "impression", "ad_id": "bad id!"})
	writeCSV(t, path, rows)
	src, err := Open(context.Background(), path, "", "", S3Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var errs bytes.Buffer
	sum, err := Run(context.Background(), Options{Source: src, DryRun: true, Errors: &errs})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Rows != 16 || sum.Valid != 15 || sum.Rejected != 1 || !strings.Contains(errs.String(), "row 16: ad_id:") {
		t.Fatalf("summary %+v, errors %q", sum, errs.String())
	}
}

// A line over the per-event limit is one rejected row, read without holding it in memory.
func TestHugeLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "e.ndjson")
	huge := `{"type":"impression","ad_id":"ad-1","impression_id":"i","user_agent":"` + strings.Repeat("x", 1<<20) + `"}`
	if err := os.WriteFile(path, []byte(huge+"\n"+`{"type":"impression","ad_id":"ad-1","impression_id":"j"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	src, _ := Open(context.Background(), path, "", "", S3Options{})
	defer src.Close()
	var errs bytes.Buffer
	sum, err := Run(context.Background(), Options{Source: src, DryRun: true, Errors: &errs})
	if err != nil || sum.Valid != 1 || sum.Rejected != 1 || !strings.Contains(errs.String(), "row 1: line longer") {
		t.Fatalf("sum %+v err %v errors %q", sum, err, errs.String())
	}
}

// A CSV line far over the bound stops the import with a clear error instead of filling memory.
func TestHugeCSVLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "e.csv")
	if err := os.WriteFile(path, []byte("type,ad_id,impression_id\nimpression,ad-1,"+strings.Repeat("x", 1<<20)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	src, _ := Open(context.Background(), path, "", "", S3Options{})
	defer src.Close()
	_, err := Run(context.Background(), Options{Source: src, DryRun: true})
	if err == nil || !strings.Contains(err.Error(), "CSV line longer") {
		t.Fatalf("err %v", err)
	}
}
