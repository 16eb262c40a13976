package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/client"
)

// TestRestartUsesKeySnapshot: a clean stop writes the dedup key snapshot, and a start after
// kill -9 loads it and reads only the log after it; every click sent before the kill and
// retried after the restart still counts once.
func TestRestartUsesKeySnapshot(t *testing.T) {
	needBinary(t)
	e := newEnv(t)
	args := []string{"--admin-key", testAdminKey, "--click-secret", testClickSecret}
	srv := e.start(args...)
	c := newClient(8)
	ctx := context.Background()
	cat := setupCatalog(t, c, srv.base, testAdminKey, "snap-", 1, 1, 3)
	signer, err := client.NewSigner(client.SignerConfig{Secret: testClickSecret, BaseURL: srv.base})
	if err != nil {
		t.Fatal(err)
	}
	var tokens []string
	click := func(base, tok string) {
		t.Helper()
		resp, err := do(ctx, c, "GET", base+"/c/"+tok, "", nil, nil)
		if err != nil || resp.status != http.StatusFound {
			t.Fatalf("GET /c: %v %v", resp, err)
		}
	}
	send := func(base string, n int) {
		t.Helper()
		for range n {
			ad := cat.ads[len(tokens)%len(cat.ads)]
			u, _, err := signer.ClickURL(ad.id, fmt.Sprintf("snap-%d", len(tokens)), "", 0)
			if err != nil {
				t.Fatal(err)
			}
			tok := u[strings.LastIndex(u, "/c/")+3:]
			click(base, tok)
			tokens = append(tokens, tok)
		}
	}

	send(srv.base, 300)
	srv.stop(t) // a clean stop writes a snapshot after the last click

	srv = e.start(args...)
	if !hasLine(srv, "dedup keys loaded from the snapshot", "tail_events=0") {
		t.Fatalf("the start after a clean stop did not load the snapshot alone:\n%s", srv.tail(30))
	}
	send(srv.base, 200) // the tail: after the snapshot
	srv.kill(t)

	srv = e.start(args...)
	if !hasLine(srv, "dedup keys loaded from the snapshot", "tail_events=200") {
		t.Fatalf("the start after kill -9 did not load the snapshot and the 200 events after it:\n%s", srv.tail(30))
	}
	for _, tok := range tokens { // every click retried: each must be recognised
		click(srv.base, tok)
	}
	send(srv.base, 50)
	want := int64(len(tokens))
	poll(t, "every click counted once", 60*time.Second, func() []string {
		var m struct {
			Series []struct {
				Points []struct {
					Clicks int64 `json:"clicks"`
				} `json:"points"`
			} `json:"series"`
		}
		path := "/metrics?interval=1d&start_time=" + fmt.Sprint(time.Now().Add(-48*time.Hour).Unix()) + "&campaign_ids=" + cat.ads[0].campaign
		if err := getJSON(ctx, c, srv.base, path, testAdminKey, &m); err != nil {
			return []string{err.Error()}
		}
		var n int64
		for _, s := range m.Series {
			for _, p := range s.Points {
				n += p.Clicks
			}
		}
		if n != want {
			return []string{fmt.Sprintf("%d clicks, want %d", n, want)}
		}
		return nil
	})
	srv.stop(t)
}

// hasLine reports whether a line of srv's log contains every part.
func hasLine(srv *server, parts ...string) bool {
	for _, l := range srv.log() {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return true
		}
	}
	return false
}
