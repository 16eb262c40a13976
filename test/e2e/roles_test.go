package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// TestRolesAcrossProcesses runs adpulse as a split deployment: two ingest-only processes and
// one process+query process, on Kafka (kfake, in this test process, on loopback ports), Redis
// and PostgreSQL; the catalog reaches the ingest processes through the change feed. Clicks and batches reach both ingest processes, with every event sent to
// both (a retry landing on the other process); each ingest process and then the processing
// one is killed with SIGKILL mid-load and restarted. /metrics and spend on the query process
// must equal the distinct events exactly.
func TestRolesAcrossProcesses(t *testing.T) {
	needBinary(t)
	redisAddr, pg := os.Getenv("ADPULSE_TEST_REDIS_ADDR"), os.Getenv("ADPULSE_TEST_POSTGRES_DSN")
	if redisAddr == "" || pg == "" {
		t.Skip("ADPULSE_TEST_REDIS_ADDR and ADPULSE_TEST_POSTGRES_DSN not set: skipping the multi-process test")
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	rng := newRand(seed(t), 1)
	run := fmt.Sprintf("r%d", time.Now().UnixNano()) // Redis and PostgreSQL outlive the test
	shared := []string{
		"--event-log", "kafka", "--kafka-brokers", strings.Join(cluster.ListenAddrs(), ","), "--kafka-topic", "adpulse-" + run,
		"--kafka-replication-factor", "1", "--partitions", "4",
		"--dedup", "redis", "--redis-addr", redisAddr, "--catalog-dsn", pg,
		"--admin-key", testAdminKey, "--click-secret", testClickSecret,
	}
	e := newEnv(t)
	node := func(name, roles string) []string {
		return append(append([]string{}, shared...), "--roles", roles, "--data-dir", filepath.Join(e.dir, name))
	}
	proc := e.start(node("process", "process,query")...)
	ing := []*server{e.start(node("ingest-1", "ingest")...), e.start(node("ingest-2", "ingest")...)}
	c := newClient(16)
	// The catalog is written through the processing process after every process started:
	// the ingest processes learn it from the catalog change feed, within 2 s.
	cat := setupCatalog(t, c, proc.base, testAdminKey, run+"-", 1, 2, 3) // 250,000 micros a click, no budget limit
	written := time.Now()
	last := cat.ads[len(cat.ads)-1]
	for _, srv := range ing {
		for {
			_, err := clickToken(context.Background(), c, srv.base, testAdminKey, last.id, run+"-probe", "")
			if err == nil {
				break
			}
			if time.Since(written) > 2*time.Second {
				t.Fatalf("an ad written through the processing process is unknown to %s after 2s: %v", srv.base, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Logf("catalog in force on both ingest processes %v after the last write", time.Since(written).Round(time.Millisecond))

	// Each role serves its own routes; the /api/v1 routes answer everywhere.
	ctx := context.Background()
	for _, check := range []struct {
		srv          *server
		method, path string
		want         int
	}{
		{ing[0], "GET", "/metrics?ad_ids=x", http.StatusNotFound},
		{proc, "POST", "/click", http.StatusNotFound},
		{ing[1], "GET", "/api/v1/ads/" + cat.ads[0].id, http.StatusOK},
	} {
		resp, err := do(ctx, c, check.method, check.srv.base+check.path, testAdminKey, nil, nil)
		if err != nil || resp.status != check.want {
			t.Fatalf("%s %s on %s: %v %v, want %d", check.method, check.path, check.srv.base, resp, err, check.want)
		}
	}

	distinct := map[string]int{} // campaign -> distinct clicks
	sent := 0
	send := func(round int) {
		for i := range 40 {
			ad := cat.ads[rng.IntN(len(cat.ads))]
			imp := fmt.Sprintf("%s-imp-%d-%d", run, round, i)
			tok, err := clickToken(ctx, c, ing[rng.IntN(2)].base, testAdminKey, ad.id, imp, "u1")
			if err != nil {
				t.Fatal(err)
			}
			distinct[ad.campaign]++
			// The same click through both ingest processes, in random order: one counts.
			for _, k := range rng.Perm(2) {
				resp, err := do(ctx, c, "GET", ing[k].base+"/c/"+tok, "", nil, nil)
				if err != nil || resp.status != http.StatusFound {
					t.Fatalf("click on ingest-%d: %v %v", k+1, resp, err)
				}
				sent++
			}
		}
		// A batch of clicks sent to both processes too.
		var lines []string
		for i := range 50 {
			ad := cat.ads[rng.IntN(len(cat.ads))]
			lines = append(lines, fmt.Sprintf(`{"type":"click","impression_id":"%s-batch-%d-%d","ad_id":"%s"}`, run, round, i, ad.id))
			distinct[ad.campaign]++
		}
		body := []byte(strings.Join(lines, "\n"))
		for _, srv := range ing {
			resp, err := do(ctx, c, "POST", srv.base+"/events", testAdminKey, map[string]string{"Content-Type": "application/x-ndjson"}, body)
			if err != nil || resp.status != http.StatusOK {
				t.Fatalf("batch: %v %v", resp, err)
			}
			sent += len(lines)
		}
	}
	send(0)
	ing[0].kill(t)
	ing[0] = e.start(node("ingest-1", "ingest")...)
	send(1)
	proc.kill(t)
	send(2) // the processing process is down: ingest still takes clicks
	proc = e.start(node("process", "process,query")...)
	ing[1].kill(t)
	ing[1] = e.start(node("ingest-2", "ingest")...)
	send(3)

	campaigns := make([]string, 0, len(distinct))
	for cmp := range distinct {
		campaigns = append(campaigns, cmp)
	}
	took := poll(t, "campaign clicks and spend on the query process", 60*time.Second, func() []string {
		var out struct {
			Series []struct {
				CampaignID string `json:"campaign_id"`
				Points     []struct {
					Clicks      int64 `json:"clicks"`
					SpendMicros int64 `json:"spend_micros"`
				} `json:"points"`
			} `json:"series"`
		}
		path := "/metrics?interval=1d&start_time=" + fmt.Sprint(time.Now().Add(-48*time.Hour).Unix()) + "&campaign_ids=" + strings.Join(campaigns, ",")
		if err := getJSON(ctx, c, proc.base, path, testAdminKey, &out); err != nil {
			return []string{err.Error()}
		}
		var diffs []string
		for _, s := range out.Series {
			var clicks, spend int64
			for _, p := range s.Points {
				clicks += p.Clicks
				spend += p.SpendMicros
			}
			want := int64(distinct[s.CampaignID])
			if clicks != want || spend != want*250000 {
				diffs = append(diffs, fmt.Sprintf("%s: %d clicks, %d micros spent; want %d and %d", s.CampaignID, clicks, spend, want, want*250000))
			}
		}
		return diffs
	})
	total := 0
	for _, n := range distinct {
		total += n
	}
	t.Logf("%d requests' events (each sent to both ingest processes) gave %d distinct clicks, exact on the query process %v after the last send", sent, total, took.Round(time.Millisecond))
}
