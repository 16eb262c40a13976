package pebblestore

import (
	"context"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/metricstore"
)

func TestTmpCopy(t *testing.T) {
	s, err := Open("/tmp/mcopy", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	now := time.Now().Unix() / 60 / 60 * 60
	p := "bd69widh-ad-"
	ids := []string{p + "5", p + "77", p + "1234", p + "5555", p + "9999", p + "12345", p + "22222", p + "33333", p + "44444", p + "55555"}
	for round := range 5 {
		st0 := s.Stats()
		for range 1000 {
			if _, err := s.Query(ctx, metricstore.Query{Level: metricstore.LevelAd, IDs: ids, Start: time.Unix((now-1440)*60, 0), End: time.Unix(now*60, 0), Interval: time.Hour}); err != nil {
				t.Fatal(err)
			}
		}
		st := s.Stats()
		t.Logf("round %d: misses/query %.2f hits/query %.2f", round, float64(st.BlockCacheMisses-st0.BlockCacheMisses)/1000, float64(st.BlockCacheHits-st0.BlockCacheHits)/1000)
	}
	t.Log(s.db.Metrics().String())
}
