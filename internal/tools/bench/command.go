package bench

import (
	"context"
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

// Command is `adpulse bench`: it parses args (each flag may also come from its ADPULSE_*
// environment variable, looked up with lookupEnv), runs, prints the table to stdout and
// progress to stderr. It returns an error when the run could not be made, or when adpulse
// lost or double-counted anything; unmet speed goals are reported in the table, not as
// errors.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) error {
	size := presetName(args, lookupEnv)
	var o Options
	switch size {
	case "quick":
		o = QuickOptions()
	case "full":
		o = FullOptions()
	default:
		return fmt.Errorf("--size %q: quick or full", size)
	}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: adpulse bench [flags]\n\n"+
			"Starts adpulse (this binary, `serve` on a temporary data dir and loopback ports) or uses a running\n"+
			"one (--target), runs the standard scenarios, optionally the same against the ClickHouse and Redis\n"+
			"baselines (--baseline; scripts/install-baselines.sh installs and starts them), and prints one table.\n"+
			"--size quick takes about 1 minute for adpulse alone and 3 with both baselines; --size full is the issue's\n"+
			"sizes (10 million ads with a day of data, 30 s runs): about 12 minutes for adpulse, 25 with both baselines.\n"+
			"Flags override either preset.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	var (
		scenarios, baselines, jsonPath, dataDir string
		serveBaseline, baselineID               string
		progress                                bool
	)
	fs.String("size", size, "preset of sizes and durations: quick (1-3 minutes) or full (12-25 minutes)")
	fs.StringVar(&o.Binary, "adpulse-bin", "", "adpulse binary to start (default: this executable)")
	fs.StringVar(&o.WorkDir, "work-dir", "", "data dir and logs of the started adpulse (default: a temp dir, removed after)")
	fs.BoolVar(&o.Keep, "keep", false, "keep the work dir")
	fs.StringVar(&o.Target, "target", "", "use this running adpulse (loopback URL) instead of starting one; RSS, CPU and recovery rows are skipped")
	fs.StringVar(&o.OpsURL, "ops-url", "", "ops listener of --target, for CPU profiles and to wait for it to go idle before the query rows")
	fs.StringVar(&o.AdminKey, "admin-key", "", "admin key of --target")
	fs.StringVar(&o.ClickSecret, "click-secret", "", "click secret (keyring) of --target, to sign click tokens")
	fs.StringVar(&dataDir, "data-dir", "", "data dir of --target, to read its admin key and click secret from")
	fs.Func("serve-flag", "a flag for the started `adpulse serve`, such as --serve-flag=--dedup-window=20m (repeat for more)", func(v string) error {
		if !strings.HasPrefix(v, "-") {
			return fmt.Errorf("%q: a flag, such as --dedup-window=20m", v)
		}
		o.ServeArgs = append(o.ServeArgs, v)
		return nil
	})
	fs.StringVar(&scenarios, "scenarios", strings.Join(o.Scenarios, ","), "scenarios to run: "+strings.Join(AllScenarios, ","))
	fs.StringVar(&baselines, "baseline", "", "baselines to run the same scenarios against: bare (token check, fsynced append, 302: the physical reference of the click rows), clickhouse, redis")
	fs.StringVar(&o.ClickHouseAddr, "clickhouse-addr", o.ClickHouseAddr, "ClickHouse native protocol address of the clickhouse baseline")
	fs.DurationVar(&o.ClickHouseFlush, "clickhouse-flush", o.ClickHouseFlush, "longest a click waits for its ClickHouse batch insert")
	fs.StringVar(&o.RedisAddr, "redis-addr", o.RedisAddr, "Redis address of the redis baseline (and of --split's dedup)")
	fs.BoolVar(&o.Split, "split", false, "also measure a split deployment in the same run: 2 ingest, 2 process and 1 query nodes on Kafka (kfake, in this process), --redis-addr, --catalog-dsn and --clickhouse-addr")
	fs.StringVar(&o.SplitCatalogDSN, "catalog-dsn", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "shared SQL database of --split (postgres://... or mysql://...)")
	fs.DurationVar(&o.BaselineDedup, "baseline-dedup-window", o.BaselineDedup, "how far back the baselines recognise a duplicate")
	fs.IntVar(&o.ClickAds, "click-ads", o.ClickAds, "ads the click scenarios spread over (Zipf popularity)")
	fs.Float64Var(&o.DupShare, "dup-share", o.DupShare, "share of clicks sent twice (must count once)")
	fs.Float64Var(&o.ClickRate, "click-rate", o.ClickRate, "clicks/s of the fixed-rate scenario (open model)")
	fs.DurationVar(&o.ClickDuration, "click-duration", o.ClickDuration, "duration of the fixed-rate scenario")
	fs.IntVar(&o.ClickConns, "click-conns", o.ClickConns, "most clicks in flight (connections) at the fixed rate")
	fs.DurationVar(&o.SatDuration, "sat-duration", o.SatDuration, "duration of the saturation scenario")
	fs.IntVar(&o.SatConns, "sat-conns", o.SatConns, "workers (connections) at saturation, closed model")
	fs.Float64Var(&o.SatMaxRate, "sat-max-rate", o.SatMaxRate, "tokens pre-signed for saturation: this x --sat-duration")
	fs.DurationVar(&o.EventsDuration, "events-duration", o.EventsDuration, "duration of the POST /events scenario")
	fs.IntVar(&o.EventsBatch, "events-batch", o.EventsBatch, "lines per POST /events")
	fs.IntVar(&o.EventsConns, "events-conns", o.EventsConns, "connections sending POST /events")
	fs.IntVar(&o.EventsAds, "events-ads", o.EventsAds, "ads the events spread over")
	fs.IntVar(&o.FreshSamples, "fresh-samples", o.FreshSamples, "click-to-visible samples")
	fs.Float64Var(&o.FreshLoadRate, "fresh-load-rate", o.FreshLoadRate, "background clicks/s during the freshness samples")
	fs.IntVar(&o.HistoryAds, "history-ads", o.HistoryAds, "ads in the store the queries run on (each with a day of history)")
	fs.IntVar(&o.HistoryPerAd, "history-per-ad", o.HistoryPerAd, "history events per ad (impression, click, impression...)")
	fs.IntVar(&o.Queries, "queries", o.Queries, "requests of each query kind")
	fs.IntVar(&o.QueryConns, "query-conns", o.QueryConns, "concurrent query clients")
	fs.DurationVar(&o.QueryMaxDuration, "query-max-duration", o.QueryMaxDuration, "longest each query loop runs (fewer than --queries then)")
	fs.IntVar(&o.MetricsAds, "metrics-ads", o.MetricsAds, "ads per /metrics request")
	fs.IntVar(&o.TopN, "top-n", o.TopN, "n of the /metrics/top request")
	fs.IntVar(&o.TopMinutes, "top-minutes", o.TopMinutes, "minutes of the /metrics/top request")
	fs.Float64Var(&o.RecoveryRate, "recovery-rate", o.RecoveryRate, "clicks/s while adpulse is killed (and restarted in place, scenario restart)")
	fs.DurationVar(&o.RecoveryAfter, "recovery-after", o.RecoveryAfter, "how long into the load the kill -9 (or SIGUSR2, scenario restart) comes")
	fs.DurationVar(&o.CatchUp, "catch-up", o.CatchUp, "how long the checks wait for /metrics to count what was acknowledged")
	fs.Int64Var(&o.MaxRSS, "max-rss", o.MaxRSS, "kill the started adpulse if its RSS passes this many bytes (protects a shared machine)")
	fs.StringVar(&o.ProfileDir, "profile-dir", "", "write CPU profiles of adpulse during clicks-sat, events and the top queries, and its heap once the history settled, here")
	fs.IntVar(&o.ProfileSeconds, "profile-seconds", o.ProfileSeconds, "length of each CPU profile")
	fs.DurationVar(&o.Soak.Duration, "soak-duration", 10*time.Minute, "duration of the soak scenario (--scenarios soak)")
	fs.Float64Var(&o.Soak.Rate, "soak-rate", 10_000, "clicks/s of the soak outside its spike (open model)")
	fs.Float64Var(&o.Soak.Spike, "soak-spike", 3, "rate multiplier of the soak's spike")
	fs.DurationVar(&o.Soak.SpikeFor, "soak-spike-for", 30*time.Second, "length of the soak's spike (it starts half way)")
	fs.DurationVar(&o.Soak.Interval, "soak-interval", 10*time.Second, "the soak's reporting interval")
	fs.IntVar(&o.Soak.Conns, "soak-conns", 512, "most soak clicks in flight")
	fs.Uint64Var(&o.Seed, "seed", 0, "seed of every random choice (0: from the clock; printed)")
	fs.StringVar(&jsonPath, "json", "", "also write the full result as JSON to this file")
	fs.BoolVar(&progress, "progress", true, "print progress to stderr")
	fs.StringVar(&serveBaseline, "serve-baseline", "", "(internal) serve this baseline's HTTP API on a loopback port until stopped; the bench starts this itself")
	fs.StringVar(&baselineID, "baseline-id", "", "(internal) table suffix and key prefix of --serve-baseline")
	if err := cliflag.Parse(fs, args, lookupEnv); err != nil {
		return err
	}
	if serveBaseline != "" {
		if !validToken(baselineID) {
			return errors.New("--baseline-id: 1-32 letters and digits")
		}
		return serveBaselineCommand(ctx, baselineConfig{name: serveBaseline, id: baselineID, clickhouseAddr: o.ClickHouseAddr,
			clickhouseFlush: o.ClickHouseFlush, redisAddr: o.RedisAddr, dedup: o.BaselineDedup, adminKey: o.AdminKey, clickSecret: o.ClickSecret}, stdout)
	}
	o.Scenarios = splitList(scenarios)
	o.Baselines = splitList(baselines)
	if dataDir != "" {
		var err error
		if o.AdminKey == "" {
			if o.AdminKey, err = readSecret(dataDir, "admin-key"); err != nil {
				return fmt.Errorf("no --admin-key and none in --data-dir: %w", err)
			}
		}
		if o.ClickSecret == "" {
			if o.ClickSecret, err = readSecret(dataDir, "click-secret"); err != nil {
				return fmt.Errorf("no --click-secret and none in --data-dir: %w", err)
			}
		}
	}
	if progress {
		o.Progress = stderr
	}
	o.Command = "adpulse bench " + strings.Join(redact(args), " ")
	res, err := Run(ctx, o)
	if res == nil {
		return err
	}
	res.WriteTable(stdout)
	for _, tr := range res.Targets {
		if tr.Soak != nil {
			tr.Soak.WriteSoak(stdout)
		}
	}
	if jsonPath != "" {
		if werr := res.WriteJSON(jsonPath); werr != nil {
			return errors.Join(err, fmt.Errorf("write --json: %w", werr))
		}
	}
	if err != nil {
		return err
	}
	for _, r := range res.Rows {
		if strings.HasSuffix(r.ID, "_exact") && r.Met == "no" {
			return fmt.Errorf("adpulse failed the %s check (seed %d): see the table", r.ID, res.Seed)
		}
	}
	return nil
}

// presetName finds --size in args or ADPULSE_SIZE before the flags are registered, so the
// preset supplies the defaults that the other flags then override.
func presetName(args []string, lookupEnv func(string) (string, bool)) string {
	for i, a := range args {
		if a == "--" {
			break
		}
		name := strings.TrimLeft(a, "-")
		if name == a {
			continue
		}
		if v, ok := strings.CutPrefix(name, "size="); ok {
			return v
		}
		if name == "size" && i+1 < len(args) {
			return args[i+1]
		}
	}
	if v, ok := lookupEnv(cliflag.EnvName("size")); ok {
		return v
	}
	return "quick"
}

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// redact hides secrets given on the command line from the printed command.
func redact(args []string) []string {
	out := make([]string, len(args))
	hide := false
	for i, a := range args {
		switch {
		case hide:
			out[i], hide = "REDACTED", false
		case a == "--admin-key" || a == "-admin-key" || a == "--click-secret" || a == "-click-secret":
			out[i], hide = a, true
		case strings.HasPrefix(a, "--admin-key=") || strings.HasPrefix(a, "--click-secret=") || strings.HasPrefix(a, "-admin-key=") || strings.HasPrefix(a, "-click-secret="):
			k, _, _ := strings.Cut(a, "=")
			out[i] = k + "=REDACTED"
		default:
			out[i] = a
		}
	}
	return out
}

func readSecret(dataDir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "secrets", name))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func validToken(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
