package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/adpulse/adpulse/client"
)

// TestRestartInPlaceDropsNoClick: SIGUSR2 hands the listening sockets to a new process, which
// takes the data dir over once the old one has drained; browsers clicking all along (GET /c
// over keep-alive connections, click URLs signed by the ad server without asking adpulse) see
// no refused connection and no error, only slower answers, and every click counts once.
func TestRestartInPlaceDropsNoClick(t *testing.T) {
	needBinary(t)
	e := newEnv(t)
	old := e.start("--admin-key", testAdminKey, "--click-secret", testClickSecret)
	c := newClient(16)
	ctx := context.Background()
	cat := setupCatalog(t, c, old.base, testAdminKey, "h-", 1, 1, 3)
	pidFile := filepath.Join(e.dataDir, "PID")
	signer, err := client.NewSigner(client.SignerConfig{Secret: testClickSecret, BaseURL: old.base})
	if err != nil {
		t.Fatal(err)
	}
	oldPID := old.cmd.Process.Pid

	var (
		sent, failed atomic.Int64
		mu           sync.Mutex
		failures     []string
		perAd        = map[string]int64{}
		stop         = make(chan struct{})
		wg           sync.WaitGroup
	)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ad := cat.ads[(w+i)%len(cat.ads)]
				u, _, err := signer.ClickURL(ad.id, fmt.Sprintf("h-%d-%d", w, i), "", 0)
				tok := u[strings.LastIndex(u, "/c/")+3:]
				if err == nil {
					var resp *response
					resp, err = do(ctx, c, "GET", old.base+"/c/"+tok, "", nil, nil)
					if err == nil && resp.status != http.StatusFound {
						err = fmt.Errorf("GET /c: %v", resp)
					}
				}
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if len(failures) < 10 {
						failures = append(failures, err.Error())
					}
					mu.Unlock()
					continue
				}
				sent.Add(1)
				mu.Lock()
				perAd[ad.campaign]++
				mu.Unlock()
			}
		}()
	}
	time.Sleep(time.Second)
	before := sent.Load()
	handoff := time.Now()
	if err := syscall.Kill(oldPID, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	// The new process owns the data dir once its PID is in it and /readyz answers again.
	var newPID int
	t.Cleanup(func() {
		if newPID > 0 {
			_ = syscall.Kill(newPID, syscall.SIGKILL)
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, _ := os.ReadFile(pidFile)
		if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && p != oldPID {
			newPID = p
			if resp, err := http.Get("http://" + old.ops + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new process ready 60s after SIGUSR2\n%s", old.tail(30))
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(handoff)
	if err := syscall.Kill(oldPID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("the old process %d still runs after the new one is ready: %v", oldPID, err)
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d clicks acknowledged (%d during the restart), %d failed; new process ready %v after SIGUSR2",
		sent.Load(), sent.Load()-before, failed.Load(), took.Round(time.Millisecond))
	if failed.Load() > 0 {
		t.Fatalf("%d requests failed during the restart: %v", failed.Load(), failures)
	}
	campaigns := make([]string, 0, len(perAd))
	for id := range perAd {
		campaigns = append(campaigns, id)
	}
	poll(t, "every acknowledged click counted once", 30*time.Second, func() []string {
		var m struct {
			Series []struct {
				CampaignID string `json:"campaign_id"`
				Points     []struct {
					Clicks int64 `json:"clicks"`
				} `json:"points"`
			} `json:"series"`
		}
		path := "/metrics?interval=1d&start_time=" + fmt.Sprint(time.Now().Add(-48*time.Hour).Unix()) + "&campaign_ids=" + strings.Join(campaigns, ",")
		if err := getJSON(ctx, c, old.base, path, testAdminKey, &m); err != nil {
			return []string{err.Error()}
		}
		var diffs []string
		for _, s := range m.Series {
			var n int64
			for _, p := range s.Points {
				n += p.Clicks
			}
			if n != perAd[s.CampaignID] {
				diffs = append(diffs, fmt.Sprintf("%s: %d clicks, want %d", s.CampaignID, n, perAd[s.CampaignID]))
			}
		}
		return diffs
	})
	if err := syscall.Kill(newPID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 400 && syscall.Kill(newPID, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
}
