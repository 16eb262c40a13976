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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// procStat is what /proc says about a process.
type procStat struct {
	RSS, HWM int64   // bytes: resident now, and the peak
	CPU      float64 // user + system seconds since start
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// readProc reads /proc/PID/status and /proc/PID/stat.
func readProc(pid int) (procStat, error) {
	var st procStat
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmRSS":
			st.RSS = n << 10
		case "VmHWM":
			st.HWM = n << 10
		}
	}
	b, err = os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return st, err
	}
	// The command name (field 2) may hold spaces: fields count from after its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return st, errors.New("/proc stat: no command")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return st, errors.New("/proc stat: short")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14
	sy, _ := strconv.ParseInt(f[12], 10, 64) // field 15
	st.CPU = float64(ut+sy) / clockTicks
	return st, nil
}

// findProcess returns the pid of the only process whose /proc comm is comm, or 0.
func findProcess(comm string) int {
	dirs, _ := filepath.Glob("/proc/[0-9]*/comm")
	found := 0
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil || strings.TrimSpace(string(b)) != comm {
			continue
		}
		if found != 0 {
			return 0 // ambiguous
		}
		found, _ = strconv.Atoi(filepath.Base(filepath.Dir(d)))
	}
	return found
}

// loadAvg is the 1-minute load average, or -1.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}

// child is an `adpulse serve` process the bench started; it can be killed and restarted on
// the same data dir.
type child struct {
	name     string // of its log files (default "adpulse")
	bin      string
	dataDir  string
	logDir   string
	adminKey string
	secret   string
	extra    []string

	starts int
	api    string // host:port
	ops    string // host:port

	stateMu sync.Mutex // cmd, done and adopted: the RSS watchdog reads them while a restart sets them
	cmd     *exec.Cmd
	done    chan struct{}
	err     error // set before done is closed
	// adopted is the process that took over from cmd by a restart in place (SIGUSR2): not
	// the bench's child, so it is signalled and watched by pid.
	adopted int

	mu    sync.Mutex
	lines []string
}

var readyRE = regexp.MustCompile(`msg="adpulse ready" listen=(\S+) ops=(\S+)`)

// start starts the server and waits until its ready line and /readyz; it returns how long
// that took from the exec.
func (c *child) start(ctx context.Context) (time.Duration, error) {
	c.starts++
	c.adopt(0)
	name := c.name
	if name == "" {
		name = "adpulse"
	}
	logPath := filepath.Join(c.logDir, fmt.Sprintf("%s-%d.log", name, c.starts))
	logFile, err := os.Create(logPath)
	if err != nil {
		return 0, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		logFile.Close()
		return 0, err
	}
	args := append([]string{"serve", "--data-dir", c.dataDir, "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0",
		"--admin-key", c.adminKey, "--click-secret", c.secret, "--log-format", "text",
		"--rate-limit-ip", "0", "--rate-limit-key", "0"}, c.extra...) // the bench's load comes from one address
	cmd := exec.Command(c.bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ADPULSE_") { // nothing from the caller's shell configures it
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		logFile.Close()
		return 0, fmt.Errorf("start %s: %w", c.bin, err)
	}
	pw.Close()
	done := make(chan struct{})
	c.stateMu.Lock()
	c.cmd, c.done = cmd, done
	c.stateMu.Unlock()
	ready := make(chan [2]string, 1)
	read := make(chan struct{})
	go func() {
		defer close(read)
		defer pr.Close()
		defer logFile.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logFile, line)
			c.mu.Lock()
			c.lines = append(c.lines, line)
			if len(c.lines) > 200 {
				c.lines = c.lines[len(c.lines)-100:]
			}
			c.mu.Unlock()
			if m := readyRE.FindStringSubmatch(line); m != nil {
				select {
				case ready <- [2]string{m[1], m[2]}:
				default:
				}
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		<-read
		c.err = err
		close(done)
	}()
	timeout := time.NewTimer(10 * time.Minute) // recovery of a big data dir takes a while
	defer timeout.Stop()
	select {
	case a := <-ready:
		c.api, c.ops = a[0], a[1]
	case <-done:
		return 0, fmt.Errorf("adpulse exited before it was ready (%v); log %s:\n%s", c.err, logPath, c.tail(20))
	case <-timeout.C:
		c.kill()
		return 0, fmt.Errorf("adpulse not ready after 10 minutes; log %s", logPath)
	case <-ctx.Done():
		c.kill()
		return 0, ctx.Err()
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	for range 3000 {
		resp, err := hc.Get("http://" + c.ops + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(t0), nil
			}
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return 0, err
		}
	}
	return 0, errors.New("adpulse: /readyz not 200 30s after its ready line")
}

func (c *child) state() (*exec.Cmd, chan struct{}) {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	return c.cmd, c.done
}

// adopt makes pid, the successor of a restart in place, the process the child stands for.
func (c *child) adopt(pid int) {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	c.adopted = pid
}

func (c *child) adoptedPID() int {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	return c.adopted
}

// alive reports whether the process pid exists.
func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// signalAdopted sends sig to the adopted process and waits up to wait for it to exit.
func signalAdopted(pid int, sig syscall.Signal, wait time.Duration) bool {
	_ = syscall.Kill(pid, sig)
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if !alive(pid) {
			return true
		}
	}
	return false
}

func (c *child) pid() int {
	if p := c.adoptedPID(); p != 0 {
		return p
	}
	cmd, _ := c.state()
	if cmd == nil || cmd.Process == nil {
		return 0
	}
	return cmd.Process.Pid
}

func (c *child) running() bool {
	if p := c.adoptedPID(); p != 0 {
		return alive(p)
	}
	_, done := c.state()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits for the exit.
func (c *child) kill() {
	if p := c.adoptedPID(); p != 0 {
		signalAdopted(p, syscall.SIGKILL, 30*time.Second)
		return
	}
	cmd, done := c.state()
	if !c.running() {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
}

// stop sends SIGTERM and waits up to a minute, then kills.
func (c *child) stop() error {
	if p := c.adoptedPID(); p != 0 {
		if !signalAdopted(p, syscall.SIGTERM, time.Minute) {
			signalAdopted(p, syscall.SIGKILL, 30*time.Second)
			return errors.New("adpulse did not stop within a minute of SIGTERM; killed")
		}
		return nil
	}
	cmd, done := c.state()
	if !c.running() {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return c.err
	case <-time.After(time.Minute):
		c.kill()
		return errors.New("adpulse did not stop within a minute of SIGTERM; killed")
	}
}

func (c *child) tail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.lines
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// dirSize is the total size of the regular files under dir.
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// findRedis is the pid of the Redis server at addr (INFO server's process_id), or 0.
func findRedis(ctx context.Context, addr string) int {
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("INFO server\r\n")); err != nil {
		return 0
	}
	br := bufio.NewReader(c)
	for range 200 {
		line, err := br.ReadString('\n')
		if err != nil {
			return 0
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			pid, _ := strconv.Atoi(v)
			return pid
		}
	}
	return 0
}
