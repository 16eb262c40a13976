package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/adpulse/adpulse/internal/cliflag"
)

// Command is `adpulse loadgen`: it parses args (each flag may also come from its ADPULSE_*
// environment variable, looked up with lookupEnv), runs, prints the report to stdout and
// progress to stderr, and returns an error when the run could not be made or the check
// failed.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) error {
	if len(args) > 0 && args[0] == "ivt" {
		return ivtCommand(ctx, args[1:], stdout, stderr, lookupEnv)
	}
	o := DefaultOptions()
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: adpulse loadgen [flags]\n\n"+
			"Sends realistic ad traffic to a running adpulse, records what it acknowledged, then checks\n"+
			"GET /metrics and /metrics/top against that record (lost and double-counted must be 0).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	var (
		jsonPath, dataDir, check string
		seed                     uint64
		progress                 bool
	)
	fs.StringVar(&o.Target, "target", o.Target, "base URL of the adpulse API (loopback only, unless --allow-remote)")
	fs.StringVar(&o.MetricsURL, "metrics-url", "", "base URL of /metrics and /metrics/top (default: --target)")
	fs.StringVar(&o.AdminKey, "admin-key", "", "admin API key (default: the one stored in --data-dir)")
	fs.StringVar(&o.ClickSecret, "click-secret", "", "click secret or keyring: sign click tokens locally instead of asking POST /api/v1/click-urls")
	fs.StringVar(&dataDir, "data-dir", "", "data dir of a local adpulse server, to read the admin key (and click secret) from")
	fs.BoolVar(&o.AllowRemote, "allow-remote", false, "allow a target that is not a loopback address")
	fs.BoolVar(&o.Setup, "setup", false, "create (upsert) the advertisers, campaigns and ads first")
	fs.IntVar(&o.Layout.Ads, "ads", o.Layout.Ads, "ads (ad i is in campaign i % campaigns)")
	fs.IntVar(&o.Layout.Campaigns, "campaigns", o.Layout.Campaigns, "campaigns (campaign j belongs to advertiser j % advertisers)")
	fs.IntVar(&o.Layout.Advertisers, "advertisers", o.Layout.Advertisers, "advertisers")
	fs.StringVar(&o.Layout.Prefix, "id-prefix", o.Layout.Prefix, "prefix of every id this creates and sends")
	fs.Int64Var(&o.DailyBudgetMicros, "daily-budget", 0, "daily budget of the campaigns --setup creates, in micros (0: unlimited)")
	fs.Uint64Var(&seed, "seed", 0, "seed of every random choice (0: from the clock; the seed is printed)")
	fs.StringVar(&o.RunID, "run-id", "", "run id in impression ids (default: from the clock)")
	fs.Float64Var(&o.Rate, "rate", o.Rate, "requests per second, open model (0: closed model, as fast as --concurrency workers go)")
	fs.DurationVar(&o.Duration, "duration", o.Duration, "how long to send")
	fs.IntVar(&o.MaxInFlight, "max-inflight", o.MaxInFlight, "most requests in flight (open model)")
	fs.IntVar(&o.Concurrency, "concurrency", o.Concurrency, "workers (closed model)")
	fs.Int64Var(&o.Requests, "requests", o.Requests, "send exactly this many requests instead of --duration's worth (0: run for --duration)")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "timeout of one request")
	m := &o.Model
	fs.Float64Var(&m.ZipfS, "zipf-s", m.ZipfS, "Zipf exponent of ad popularity (higher: fewer, hotter ads)")
	fs.Float64Var(&m.CTR, "ctr", m.CTR, "click-through rate of people")
	fs.Float64Var(&m.WebShare, "web-share", m.WebShare, "share of views through GET /i pixel and GET /c click URL")
	fs.Float64Var(&m.AppShare, "app-share", m.AppShare, "share through /events impressions and POST /click (the rest: all /events)")
	fs.Float64Var(&m.CartRate, "cart-rate", m.CartRate, "share of clicks followed by add_to_cart")
	fs.Float64Var(&m.OrderRate, "order-rate", m.OrderRate, "share of add_to_carts followed by an order")
	fs.Float64Var(&m.DoubleClick, "double-click", m.DoubleClick, "share of clicks sent twice")
	fs.Float64Var(&m.RetryShare, "retry-share", m.RetryShare, "share of requests sent again later (client retries)")
	fs.Float64Var(&m.LateShare, "late-share", m.LateShare, "share of /events lines with a past event_time")
	fs.DurationVar(&m.Lateness, "lateness", m.Lateness, "how far in the past a late line may be (keep under the server's --max-lateness)")
	fs.Float64Var(&m.BotShare, "bot-share", m.BotShare, "share of views by crawlers")
	fs.Float64Var(&m.ExpiredShare, "expired-share", m.ExpiredShare, "share of web clicks on expired tokens (with --click-secret only)")
	fs.IntVar(&m.Batch, "batch", m.Batch, "lines per POST /events")
	fs.IntVar(&m.Users, "users", m.Users, "distinct users")
	fs.BoolVar(&m.CheckoutOrders, "checkout-orders", false, "send orders as a shop's checkout does (user, catalog, value; no ad) for adpulse to attribute; set --order-rate for their rate")
	fs.StringVar(&check, "check", o.Check.String(), "compare /metrics with the acknowledgements: auto (skip if /metrics is 404), on, off")
	fs.DurationVar(&o.CatchUpTimeout, "catch-up-timeout", o.CatchUpTimeout, "how long to wait for /metrics to count everything acknowledged")
	fs.StringVar(&jsonPath, "json", "", "also write the report as JSON to this file")
	fs.BoolVar(&progress, "progress", true, "print progress to stderr")
	fs.DurationVar(&o.ProgressEvery, "progress-every", o.ProgressEvery, "interval of progress lines")
	if err := cliflag.Parse(fs, args, lookupEnv); err != nil {
		return err
	}
	var err error
	if o.Check, err = ParseCheckMode(check); err != nil {
		return err
	}
	if dataDir != "" {
		if o.AdminKey == "" {
			if o.AdminKey, err = readSecret(dataDir, "admin-key"); err != nil {
				return fmt.Errorf("no --admin-key and none in --data-dir: %w", err)
			}
		}
		if o.ClickSecret == "" {
			o.ClickSecret, _ = readSecret(dataDir, "click-secret") // optional: the server signs otherwise
		}
	}
	if o.AdminKey == "" {
		return errors.New("--admin-key (ADPULSE_ADMIN_KEY) or --data-dir is required")
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	o.Seed = seed
	if progress {
		o.Progress = stderr
	}
	fmt.Fprintf(stderr, "loadgen: seed %d (replay with --seed %d)\n", seed, seed)
	rep, err := Run(ctx, o)
	if err != nil {
		return err
	}
	rep.WriteText(stdout)
	if jsonPath != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(jsonPath, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("write --json: %w", err)
		}
	}
	if !rep.OK {
		return fmt.Errorf("check failed (seed %d): lost %d, double-counted %d, ingest false duplicates %d, double accepts %d: %s",
			seed, rep.Check.Lost, rep.Check.DoubleCounted, rep.Ingest.FalseDuplicates, rep.Ingest.DoubleAccepts, rep.Check.Reason)
	}
	return nil
}

func readSecret(dataDir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "secrets", name))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
