package chbase

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/tools/bench/baseline/baselinetest"
)

func TestStore(t *testing.T) {
	addr := os.Getenv("ADPULSE_TEST_CLICKHOUSE_ADDR")
	if addr == "" {
		t.Skip("ADPULSE_TEST_CLICKHOUSE_ADDR is not set (scripts/install-baselines.sh starts ClickHouse on 127.0.0.1:19000)")
	}
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	s, err := Open(context.Background(), Options{Addr: addr, Table: "adpulse_test_" + run, Recreate: true, FlushInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = s.Drop(context.Background())
		s.Close()
	}()
	baselinetest.Run(t, s, run)
	if n, err := s.Rows(context.Background()); err != nil || n != 11 {
		t.Errorf("raw rows: %d, %v (every row is kept; duplicates go at query time)", n, err)
	}
}
