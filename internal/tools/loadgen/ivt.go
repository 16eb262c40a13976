package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/cliflag"
	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/ivt/ivtgen"
)

// ivtCommand is `adpulse loadgen ivt`: labelled traffic (people, floods, data-centre bots,
// drip fraud; internal/ivt/ivtgen) sent through POST /events to a server running with
// --ivt-rules, then every click looked up to score the verdicts against the labels.
func ivtCommand(ctx context.Context, args []string, stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) error {
	fs := flag.NewFlagSet("loadgen ivt", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		target, adminKey, dataDir, prefix string
		allowRemote, setup                bool
		cfg                               ivtgen.Config
		settle                            time.Duration
	)
	fs.StringVar(&target, "target", "http://localhost:8080", "base URL of the adpulse API (loopback only, unless --allow-remote)")
	fs.StringVar(&adminKey, "admin-key", "", "admin API key (default: the one stored in --data-dir)")
	fs.StringVar(&dataDir, "data-dir", "", "data dir of a local adpulse server, to read the admin key from")
	fs.BoolVar(&allowRemote, "allow-remote", false, "allow a target that is not a loopback address")
	fs.BoolVar(&setup, "setup", true, "create (upsert) the advertisers, campaigns and ads first")
	fs.StringVar(&prefix, "id-prefix", "ivt", "prefix of every id this creates and sends")
	fs.Uint64Var(&cfg.Seed, "seed", 0, "seed of the traffic (0: from the clock; printed)")
	fs.DurationVar(&cfg.Duration, "span", 10*time.Minute, "event-time span of the traffic, ending now")
	fs.IntVar(&cfg.Humans, "humans", 2000, "people")
	fs.IntVar(&cfg.Floods, "floods", 4, "click-flood bots")
	fs.IntVar(&cfg.DatacenterBots, "datacenter-bots", 5, "bots browsing from data-centre addresses")
	fs.IntVar(&cfg.Drips, "drips", 5, "slow drip (click injection) sources")
	fs.DurationVar(&settle, "settle", 15*time.Second, "how long to wait for the verdicts after sending")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: adpulse loadgen ivt [flags]\n\n"+
			"Sends labelled traffic (people, floods, data-centre bots, drip fraud) through POST /events to an\n"+
			"adpulse running with --ivt-rules, waits, looks every click up and prints the precision and recall\n"+
			"of the invalid-traffic rules on it.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := cliflag.Parse(fs, args, lookupEnv); err != nil {
		return err
	}
	if adminKey == "" && dataDir != "" {
		var err error
		if adminKey, err = readSecret(dataDir, "admin-key"); err != nil {
			return fmt.Errorf("no --admin-key and none in --data-dir: %w", err)
		}
	}
	if adminKey == "" {
		return errors.New("--admin-key or --data-dir is required")
	}
	target = strings.TrimRight(target, "/")
	if !allowRemote {
		if err := checkLoopback(ctx, target); err != nil {
			return err
		}
	}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	lay := Layout{Ads: 50, Campaigns: 5, Advertisers: 2, Prefix: prefix}
	for i := range lay.Ads {
		c := lay.CampaignOf(i)
		cfg.Ads = append(cfg.Ads, ivtgen.Ad{AdID: lay.AdID(i), CampaignID: lay.CampaignID(c), AdvertiserID: lay.AdvertiserID(lay.AdvertiserOf(c))})
	}
	cfg.Start = time.Now().Add(-cfg.Duration - 5*time.Second)
	hc := &http.Client{Timeout: 30 * time.Second}
	a, err := newAPI(target, target, adminKey, hc)
	if err != nil {
		return err
	}
	do := func(method, url, ctype string, body []byte, out any) (int, error) {
		return doJSON(ctx, hc, adminKey, method, url, ctype, body, out)
	}
	if setup {
		if err := a.setup(ctx, lay, 0); err != nil {
			return err
		}
	}
	evs := ivtgen.Generate(cfg)
	run := fmt.Sprintf("%x", cfg.Seed&0xffffff)
	fmt.Fprintf(stderr, "loadgen ivt: seed %d, %d events\n", cfg.Seed, len(evs))
	var body bytes.Buffer
	send := func() error {
		if body.Len() == 0 {
			return nil
		}
		var res struct{ Accepted, Rejected int }
		_, err := do(http.MethodPost, target+"/events", "application/x-ndjson", body.Bytes(), &res)
		body.Reset()
		if err == nil && res.Rejected > 0 {
			err = fmt.Errorf("POST /events rejected %d lines", res.Rejected)
		}
		return err
	}
	for i := range evs {
		e := &evs[i]
		line, _ := json.Marshal(map[string]any{
			"type": e.TypeName(), "ad_id": e.AdID, "impression_id": e.ImpressionID + "-" + run, "user_id": e.UserID,
			"ip": e.SourceIP, "device_id": e.DeviceID, "user_agent": e.UserAgent,
			"event_time": time.UnixMicro(e.Time).UTC().Format(time.RFC3339Nano),
		})
		body.Write(line)
		body.WriteByte('\n')
		if (i+1)%500 == 0 {
			if err := send(); err != nil {
				return err
			}
		}
	}
	if err := send(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "loadgen ivt: sent; waiting %v for the verdicts\n", settle)
	if err := sleepFor(ctx, settle); err != nil {
		return err
	}
	reasons := make([]event.Reason, len(evs))
	for i := range evs {
		if evs[i].Type != event.TypeClick {
			continue
		}
		var click struct {
			InvalidTraffic *struct {
				Reason string `json:"reason"`
			} `json:"invalid_traffic"`
		}
		status, err := do(http.MethodGet, target+"/api/v1/clicks/"+evs[i].ImpressionID+"-"+run, "", nil, &click)
		switch {
		case status == http.StatusNotFound:
			reasons[i] = event.ReasonDatacenter // invalid at ingest: never in the ledger
		case err != nil:
			return err
		case click.InvalidTraffic != nil:
			reasons[i], _ = event.ParseReason(click.InvalidTraffic.Reason)
		}
	}
	fmt.Fprintf(stdout, "invalid-traffic rules on labelled traffic (seed %d; a click absent from the ledger counts as flagged at ingest, shown as datacenter):\n%s",
		cfg.Seed, ivtgen.Score(evs, reasons))
	return nil
}

// doJSON sends one request with the admin key and decodes a 200 answer into out; any other
// status is returned with an error (404 too, for the caller to tell apart).
func doJSON(ctx context.Context, hc *http.Client, key, method, url, ctype string, body []byte, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return resp.StatusCode, json.Unmarshal(b, out)
}

func sleepFor(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
