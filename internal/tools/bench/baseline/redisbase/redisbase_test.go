package redisbase

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/tools/bench/baseline/baselinetest"
)

func TestStore(t *testing.T) {
	addr := os.Getenv("ADPULSE_TEST_REDIS_ADDR")
	if addr == "" {
		t.Skip("ADPULSE_TEST_REDIS_ADDR is not set")
	}
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	s, err := Open(context.Background(), Options{Addr: addr, Prefix: "adpulse-test:" + run + ":"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Clear(context.Background()); err != nil {
			t.Errorf("clear: %v", err)
		}
		s.Close()
	}()
	baselinetest.Run(t, s, run)
	if rss, pid, err := s.Memory(context.Background()); err != nil || rss <= 0 || pid <= 0 {
		t.Errorf("memory: %d, pid %d, %v", rss, pid, err)
	}
}
