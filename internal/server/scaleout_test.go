package server

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/config"
	"github.com/twmb/franz-go/pkg/kfake"
)

// TestKafkaAndRedisBackends runs the whole pipeline on the scale-out backends: the event log
// on Kafka (kfake, an in-process Kafka speaking the real protocol), idempotency keys on Redis
// and, when PostgreSQL is configured, the catalog there. Clicks are acknowledged, duplicates
// dropped, and the counts reach /metrics.
func TestKafkaAndRedisBackends(t *testing.T) {
	redisAddr := os.Getenv("ADPULSE_TEST_REDIS_ADDR")
	if redisAddr == "" {
		t.Skip("ADPULSE_TEST_REDIS_ADDR not set: skipping the Kafka+Redis backend test")
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(3))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	_, base := startApp(t, func(c *config.Config) {
		c.EventLog, c.KafkaBrokers, c.KafkaTopic = "kafka", cluster.ListenAddrs(), fmt.Sprint("adpulse-test-", time.Now().UnixNano())
		c.Partitions = 4
		c.Dedup, c.RedisAddr = "redis", redisAddr
		if dsn := os.Getenv("ADPULSE_TEST_POSTGRES_DSN"); dsn != "" {
			// The shared catalog a fleet of ingest processes would use; tables are created
			// idempotently and these ids are upserted, so reruns are fine.
			c.CatalogDSN = dsn
		}
	})
	setupAds(t, base, 3)
	kr, _ := clicktoken.ParseKeyring("k1:0123456789abcdef0123456789abcdef")
	c := benchClient(8)
	run := fmt.Sprint(time.Now().UnixNano()) // Redis outlives the test: keys must be new
	for i := 0; i < 30; i++ {
		tok, _ := kr.Sign(clicktoken.Claims{AdID: fmt.Sprint("ad", i%3), ImpressionID: fmt.Sprintf("imp-%s-%d", run, i), IssuedAt: time.Now()})
		for rep := 0; rep < 2; rep++ {
			req, _ := http.NewRequest("GET", base+"/c/"+tok, nil)
			req.Header.Set("User-Agent", browserUA)
			resp, err := c.Do(req)
			if err != nil || resp.StatusCode != http.StatusFound {
				t.Fatalf("click: %v %v", resp, err)
			}
			resp.Body.Close()
		}
	}
	want := `"clicks":30`
	for deadline := time.Now().Add(20 * time.Second); ; {
		req, _ := http.NewRequest("GET", base+"/metrics?campaign_ids=c1&interval=1d", nil)
		req.Header.Set("Authorization", "Bearer "+testAdminKey)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed %s: %s", want, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
