package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/config"
	"github.com/twmb/franz-go/pkg/kfake"
)

// stallProxy forwards TCP connections to a backend and can stall them: while stalled, bytes
// are held (connections stay open, nothing answers), as a frozen or partitioned server does.
type stallProxy struct {
	ln      net.Listener
	target  string
	stalled atomic.Bool
	mu      sync.Mutex
	conns   []net.Conn
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target}
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	return p
}

func (p *stallProxy) addr() string { return p.ln.Addr().String() }

func (p *stallProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, b)
		p.mu.Unlock()
		go p.pipe(c, b)
		go p.pipe(b, c)
	}
}

func (p *stallProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for p.stalled.Load() {
			time.Sleep(5 * time.Millisecond)
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// TestStalledRedisBoundedAndNotReady: a Redis that stops answering costs a click its
// --backend-timeout (503), never the whole stall, and /readyz answers 503 while it lasts;
// once Redis answers again, so does adpulse.
func TestStalledRedisBoundedAndNotReady(t *testing.T) {
	redisAddr := os.Getenv("ADPULSE_TEST_REDIS_ADDR")
	if redisAddr == "" {
		t.Skip("ADPULSE_TEST_REDIS_ADDR not set: skipping the stalled Redis test")
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	proxy := newStallProxy(t, redisAddr)
	app, base := startApp(t, func(c *config.Config) {
		c.EventLog, c.KafkaBrokers, c.KafkaTopic = "kafka", cluster.ListenAddrs(), fmt.Sprint("adpulse-stall-", time.Now().UnixNano())
		c.KafkaReplicationFactor = 1
		c.Partitions = 2
		c.Dedup, c.RedisAddr = "redis", proxy.addr()
		c.BackendTimeout = 300 * time.Millisecond
		c.InFlightWait = 200 * time.Millisecond
	})
	setupAds(t, base, 1)
	kr, _ := clicktoken.ParseKeyring("k1:0123456789abcdef0123456789abcdef")
	c := benchClient(4)
	run := fmt.Sprint(time.Now().UnixNano())
	click := func(i int) (int, time.Duration) {
		tok, _ := kr.Sign(clicktoken.Claims{AdID: "ad0", ImpressionID: fmt.Sprintf("stall-%s-%d", run, i), IssuedAt: time.Now()})
		req, _ := http.NewRequest("GET", base+"/c/"+tok, nil)
		req.Header.Set("User-Agent", browserUA)
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("click: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode, time.Since(start)
	}
	readyz := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+app.OpsAddr()+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("readyz: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code, _ := click(0); code != http.StatusFound {
		t.Fatalf("click before the stall: %d", code)
	}
	if code := readyz(); code != 200 {
		t.Fatalf("readyz before the stall: %d", code)
	}

	proxy.stalled.Store(true)
	code, took := click(1)
	t.Logf("click during a Redis stall: %d after %v", code, took.Round(time.Millisecond))
	if code != http.StatusServiceUnavailable {
		t.Errorf("click during a Redis stall: %d, want 503", code)
	}
	if took > 3*time.Second {
		t.Errorf("click during a Redis stall took %v; the backend timeout is 300ms", took)
	}
	if code := readyz(); code != http.StatusServiceUnavailable {
		t.Errorf("readyz during a Redis stall: %d, want 503", code)
	}

	proxy.stalled.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, _ := click(2)
		if code == http.StatusFound && readyz() == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the stall ended: click %d, readyz %d", code, readyz())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
