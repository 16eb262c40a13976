package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/tools/bench/baseline"
	"github.com/adpulse/adpulse/internal/tools/bench/baseline/barebase"
	"github.com/adpulse/adpulse/internal/tools/bench/baseline/chbase"
	"github.com/adpulse/adpulse/internal/tools/bench/baseline/redisbase"
)

// baselineConfig is what a baseline server needs; the bench passes it to the child process
// as flags of `adpulse bench --serve-baseline NAME`.
type baselineConfig struct {
	name            string
	id              string // suffix of the ClickHouse table and the Redis key prefix
	clickhouseAddr  string
	clickhouseFlush time.Duration
	redisAddr       string
	dedup           time.Duration
	adminKey        string
	clickSecret     string
}

// openStore opens the baseline's store. cleanup drops what the run wrote.
func openStore(ctx context.Context, c baselineConfig) (store baseline.Store, cleanup func(), err error) {
	switch c.name {
	case BaselineClickHouse:
		s, err := chbase.Open(ctx, chbase.Options{Addr: c.clickhouseAddr, Table: "adpulse_bench_" + c.id, Recreate: true,
			FlushInterval: c.clickhouseFlush, DedupWindow: c.dedup})
		if err != nil {
			return nil, nil, fmt.Errorf("%w (scripts/install-baselines.sh installs and starts it)", err)
		}
		return s, func() { _ = s.Drop(context.Background()) }, nil
	case BaselineRedis:
		s, err := redisbase.Open(ctx, redisbase.Options{Addr: c.redisAddr, Prefix: "adpb:" + c.id + ":", DedupTTL: c.dedup})
		if err != nil {
			return nil, nil, fmt.Errorf("%w (scripts/install-baselines.sh installs and starts it)", err)
		}
		return s, func() { _ = s.Clear(context.Background()) }, nil
	case BaselineBare:
		dir, err := os.MkdirTemp("", "adpulse-bare-"+c.id+"-")
		if err != nil {
			return nil, nil, err
		}
		s, err := barebase.Open(barebase.Options{Dir: dir})
		if err != nil {
			os.RemoveAll(dir)
			return nil, nil, err
		}
		return s, func() { _ = os.RemoveAll(dir) }, nil
	}
	return nil, nil, fmt.Errorf("unknown baseline %q", c.name)
}

// serveBaseline serves a baseline on ln until ctx ends, then removes its data.
func serveBaseline(ctx context.Context, c baselineConfig, ln net.Listener, ready func()) error {
	keys, err := clicktoken.ParseKeyring(c.clickSecret)
	if err != nil {
		return err
	}
	store, cleanup, err := openStore(ctx, c)
	if err != nil {
		return err
	}
	defer func() {
		cleanup()
		store.Close()
	}()
	h := baseline.NewHandler(baseline.Options{Store: store, Tokens: keys, AdminKey: c.adminKey, Landing: func(ad string) (string, bool) {
		return "https://shop.example/p/" + ad, true
	}})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	ready()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

const baselineReadyMsg = "baseline ready listen="

var baselineReadyRE = regexp.MustCompile(regexp.QuoteMeta(baselineReadyMsg) + `(\S+)`)

// serveBaselineCommand is `adpulse bench --serve-baseline NAME ...`, the child the bench
// starts so a baseline's handler has a process (RSS, CPU) of its own, like adpulse.
func serveBaselineCommand(ctx context.Context, c baselineConfig, stdout io.Writer) error {
	if c.adminKey == "" || c.clickSecret == "" {
		return errors.New("--serve-baseline needs --admin-key and --click-secret")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	return serveBaseline(ctx, c, ln, func() { fmt.Fprintln(stdout, baselineReadyMsg+ln.Addr().String()) })
}

// startBaselineChild starts `bin bench --serve-baseline` and returns its address and process.
func startBaselineChild(ctx context.Context, bin, logDir string, c baselineConfig) (string, *exec.Cmd, chan struct{}, error) {
	args := []string{"bench", "--serve-baseline", c.name, "--baseline-id", c.id,
		"--clickhouse-addr", c.clickhouseAddr, "--clickhouse-flush", c.clickhouseFlush.String(),
		"--redis-addr", c.redisAddr, "--baseline-dedup-window", c.dedup.String(),
		"--admin-key", c.adminKey, "--click-secret", c.clickSecret}
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ADPULSE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	logFile, err := os.Create(filepath.Join(logDir, "baseline-"+c.name+".log"))
	if err != nil {
		return "", nil, nil, err
	}
	cmd.Stderr = logFile
	out, err := cmd.StdoutPipe()
	if err != nil {
		logFile.Close()
		return "", nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return "", nil, nil, fmt.Errorf("start %s bench --serve-baseline: %w", bin, err)
	}
	addrC := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			fmt.Fprintln(logFile, sc.Text())
			if m := baselineReadyRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addrC <- m[1]:
				default:
				}
			}
		}
		_ = cmd.Wait()
		logFile.Close()
		close(done)
	}()
	select {
	case a := <-addrC:
		return a, cmd, done, nil
	case <-done:
		b, _ := os.ReadFile(filepath.Join(logDir, "baseline-"+c.name+".log"))
		return "", nil, nil, fmt.Errorf("baseline %s exited: %s", c.name, strings.TrimSpace(string(b)))
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		return "", nil, nil, fmt.Errorf("baseline %s not ready after 60s", c.name)
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		return "", nil, nil, ctx.Err()
	}
}

func stopChild(cmd *exec.Cmd, done chan struct{}) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}
