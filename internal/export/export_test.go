package export

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/adpulse/adpulse/client"
	"github.com/adpulse/adpulse/internal/server/servertest"
)

// startServer runs an embedded adpulse with advertiser adv-1, campaign cmp-1 and ads ad-1 and
// ad-2, and returns an admin client and the data dir.
func startServer(t *testing.T) (*client.Client, string) {
	t.Helper()
	srv := servertest.Start(t, nil)
	ctx := context.Background()
	c, err := client.New(client.Config{BaseURL: srv.URL, Key: servertest.AdminKey})
	if err != nil {
		t.Fatal(err)
	}
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.PutAdvertiser(ctx, "adv-1", client.AdvertiserInput{Name: "Acme", Timezone: "UTC"}))
	must(c.PutCampaign(ctx, "cmp-1", client.CampaignInput{AdvertiserID: "adv-1", Name: "c", Status: "active", CPCBidMicros: 1000}))
	must(c.PutAd(ctx, "ad-1", client.AdInput{CampaignID: "cmp-1", LandingURL: "https://shop.example/p"}))
	must(c.PutAd(ctx, "ad-2", client.AdInput{CampaignID: "cmp-1", LandingURL: "https://shop.example/q"}))
	return c, srv.DataDir
}

// seed sends a fixed set of events two and three hours ago, and waits until /metrics has them.
func seed(t *testing.T, c *client.Client) time.Time {
	t.Helper()
	base := time.Now().UTC().Truncate(time.Hour).Add(-3 * time.Hour)
	evs := []client.Event{
		{Type: "impression", AdID: "ad-1", ImpressionID: "i1", Time: base.Add(time.Minute)},
		{Type: "impression", AdID: "ad-1", ImpressionID: "i2", Time: base.Add(2 * time.Minute)},
		{Type: "click", AdID: "ad-1", ImpressionID: "i1", Time: base.Add(3 * time.Minute), CPCMicros: 700},
		{Type: "add_to_cart", AdID: "ad-1", ImpressionID: "i1", EventID: "e1", Time: base.Add(4 * time.Minute)},
		{Type: "impression", AdID: "ad-2", ImpressionID: "i3", Time: base.Add(65 * time.Minute)},
		{Type: "order", AdID: "ad-2", ImpressionID: "i3", EventID: "e2", Time: base.Add(66 * time.Minute)},
		{Type: "add_to_cart", AdID: "ad-2", ImpressionID: "i3", EventID: "e3", Time: base.Add(67 * time.Minute)},
	}
	if res, err := c.SendEvents(context.Background(), evs); err != nil || res.Accepted != len(evs) {
		t.Fatalf("send: %+v %v", res, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		m, err := c.Metrics(context.Background(), client.MetricsQuery{CampaignIDs: []string{"cmp-1"}, Start: base, End: base.Add(3 * time.Hour), Interval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		tot := m.Series[0].Totals()
		if tot.Impressions == 3 && tot.SpendMicros == 700 && tot.Interactions["order"] == 1 {
			return base
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never caught up: %+v", tot)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func export(t *testing.T, o Options) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := Run(context.Background(), o, &b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestByteExactCSVAndNDJSON(t *testing.T) {
	c, _ := startServer(t)
	base := seed(t, c)
	h0, h1 := base.Format(time.RFC3339), base.Add(time.Hour).Format(time.RFC3339)
	o := Options{Client: c, Level: "ad", IDs: []string{"ad-2", "ad-1", "ad-9"}, From: base, To: base.Add(3 * time.Hour), Interval: time.Hour, Format: "csv"}
	want := "time,level,id,impressions,clicks,invalid_clicks,spend_micros,interactions,final\n" +
		h1 + `,ad,ad-2,1,0,0,0,"{""add_to_cart"":1,""order"":1}",false` + "\n" +
		h0 + `,ad,ad-1,2,1,0,700,"{""add_to_cart"":1}",false` + "\n"
	if got := string(export(t, o)); got != want {
		t.Fatalf("csv:\n%s\nwant:\n%s", got, want)
	}
	o.Format, o.Level, o.IDs = "ndjson", "campaign", []string{"cmp-1"}
	want = `{"time":"` + h0 + `","level":"campaign","id":"cmp-1","impressions":2,"clicks":1,"invalid_clicks":0,"spend_micros":700,"final":false,"interactions":{"add_to_cart":1}}` + "\n" +
		`{"time":"` + h1 + `","level":"campaign","id":"cmp-1","impressions":1,"clicks":0,"invalid_clicks":0,"spend_micros":0,"final":false,"interactions":{"add_to_cart":1,"order":1}}` + "\n"
	if got := string(export(t, o)); got != want {
		t.Fatalf("ndjson:\n%s\nwant:\n%s", got, want)
	}
	// With zeros, every bucket of the range is there: 3 hours.
	o.Zeros = true
	if n := strings.Count(string(export(t, o)), "\n"); n != 3 {
		t.Fatalf("with --zeros: %d rows, want 3", n)
	}
}

// Parquet written by export reads back to the same rows; and an export cut into many
// requests (1-minute buckets, one id per window forced small) equals one made in one piece.
func TestParquetRoundTripAndWindows(t *testing.T) {
	c, dir := startServer(t)
	base := seed(t, c)
	o := Options{Client: c, Level: "ad", IDs: []string{"ad-1", "ad-2"}, From: base, To: base.Add(2 * time.Hour), Interval: time.Minute, Format: "parquet"}
	pq := export(t, o)
	rows, err := parquet.Read[Row](bytes.NewReader(pq), int64(len(pq)))
	if err != nil {
		t.Fatal(err)
	}
	o.Format = "ndjson"
	var fromJSON []Row
	for _, line := range strings.Split(strings.TrimSpace(string(export(t, o))), "\n") {
		var r struct {
			Row
			Interactions json.RawMessage `json:"interactions"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		r.Row.Interactions = string(r.Interactions)
		fromJSON = append(fromJSON, r.Row)
	}
	if len(rows) != 7 || len(rows) != len(fromJSON) { // one row per busy minute
		t.Fatalf("parquet %d rows, ndjson %d", len(rows), len(fromJSON))
	}
	for i := range rows {
		a, b := rows[i], fromJSON[i]
		if !a.Time.Equal(b.Time) || a.ID != b.ID || a.Impressions != b.Impressions || a.Clicks != b.Clicks || a.SpendMicros != b.SpendMicros || a.Interactions != b.Interactions {
			t.Fatalf("row %d: parquet %+v, ndjson %+v", i, a, b)
		}
	}
	// Cut into windows of 5 buckets (25 requests per id group): the same bytes.
	whole := export(t, o)
	o.seriesPoints = 5
	var st Stats
	var b bytes.Buffer
	if st, err = Run(context.Background(), o, &b); err != nil {
		t.Fatal(err)
	}
	if st.Requests < 25 || !bytes.Equal(b.Bytes(), whole) {
		t.Fatalf("%d requests; windowed:\n%s\nwhole:\n%s", st.Requests, b.String(), whole)
	}
	// "all" ids from the data dir's catalog, in id order.
	ids, err := ListIDs(context.Background(), "sqlite:"+filepath.Join(dir, "catalog.db"), "ad")
	if err != nil || fmt.Sprint(ids) != "[ad-1 ad-2]" {
		t.Fatalf("ListIDs = %v, %v", ids, err)
	}
}

// Windows cover the range once, on bucket boundaries, local midnights included across a
// daylight saving change.
func TestWindows(t *testing.T) {
	from := time.Date(2026, 1, 1, 0, 30, 0, 0, time.UTC)
	w := windows(from, from.Add(10*time.Hour), time.Hour, nil, 4)
	if len(w) != 3 || !w[0][0].Equal(from.Truncate(time.Hour)) || !w[2][1].Equal(from.Add(10*time.Hour)) {
		t.Fatalf("windows %v", w)
	}
	for i := 1; i < len(w); i++ {
		if !w[i][0].Equal(w[i-1][1]) {
			t.Fatalf("gap or overlap at %d: %v", i, w)
		}
	}
	ny, _ := time.LoadLocation("America/New_York")
	from = time.Date(2026, 3, 1, 12, 0, 0, 0, ny)
	w = windows(from, from.AddDate(0, 0, 20), 24*time.Hour, ny, 3)
	for _, win := range w {
		if l := win[0].In(ny); l.Hour() != 0 || l.Minute() != 0 {
			t.Fatalf("window starts at %v, not a local midnight", l)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Options{Level: "ad", IDs: []string{"a"}, From: time.Unix(0, 0), To: time.Unix(3600, 0), Interval: time.Hour, Format: "csv"}
	for _, tc := range []struct {
		mut  func(*Options)
		want string
	}{
		{func(o *Options) { o.Level = "x" }, "--by"},
		{func(o *Options) { o.Interval = 2 * time.Hour }, "--interval"},
		{func(o *Options) { o.Format = "xml" }, "--format"},
		{func(o *Options) { o.To = o.From }, "--from"},
		{func(o *Options) { o.TZ = "Asia/Kolkata" }, "--tz"},
		{func(o *Options) { o.Interval, o.TZ = 24*time.Hour, "Mars/Base" }, "--tz"},
	} {
		o := ok
		tc.mut(&o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err %v, want %q", err, tc.want)
		}
	}
}
