// Command adpulse is the adpulse binary: `adpulse serve` runs the service, the other
// subcommands are tools around it. main only wires: flags and ADPULSE_* variables become a
// config.Config, and internal/server does the rest.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"
	_ "time/tzdata" // advertiser time zones must resolve on machines without a zoneinfo database

	"github.com/adpulse/adpulse/internal/bulkimport"
	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/cliflag"
	"github.com/adpulse/adpulse/internal/config"
	"github.com/adpulse/adpulse/internal/export"
	"github.com/adpulse/adpulse/internal/server"
	"github.com/adpulse/adpulse/internal/tools/bench"
	"github.com/adpulse/adpulse/internal/tools/loadgen"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	name, summary string
	run           func(args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "run the service (embedded by default; all state under --data-dir)", serve},
		{"sign", "print a signed click URL and impression URL for an ad", sign},
		{"reconcile", "recompute the metrics of a time range from the raw archive, print the differences, and --repair them", reconcileCmd},
		{"loadgen", "send realistic ad traffic, then check /metrics counts exactly what was acknowledged", func(args []string, stdout, stderr io.Writer) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return loadgen.Command(ctx, args, stdout, stderr, os.LookupEnv)
		}},
		{"bench", "measure adpulse (and the ClickHouse and Redis baselines) and print one table of figures and goals", func(args []string, stdout, stderr io.Writer) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return bench.Command(ctx, args, stdout, stderr, os.LookupEnv)
		}},
		{"import", "send rows of files (NDJSON, CSV, Parquet; local or S3) or a SQL query to POST /events, resumable", func(args []string, stdout, stderr io.Writer) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return bulkimport.Command(ctx, args, stdout, stderr, os.LookupEnv)
		}},
		{"export", "write the aggregates of ads, campaigns or advertisers as CSV, NDJSON or Parquet", func(args []string, stdout, stderr io.Writer) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return export.Command(ctx, args, stdout, stderr, os.LookupEnv)
		}},
		{"version", "print the version", func(_ []string, stdout, _ io.Writer) error {
			fmt.Fprintln(stdout, versionString())
			return nil
		}},
		{"help", "list the subcommands", func(_ []string, stdout, _ io.Writer) error {
			usage(stdout)
			return nil
		}},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(args[1:], stdout, stderr)
			var ue usageError
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp):
				return 0
			case errors.Is(err, errReportedUsage):
				return 2 // already logged, in the log's format
			case errors.Is(err, errReported):
				return 1 // already logged, in the log's format
			case errors.As(err, &ue):
				// A flag, a variable or the configuration is wrong: a usage error.
				fmt.Fprintf(stderr, "adpulse %s: %v\nRun 'adpulse %s -h' for the flags.\n", c.name, ue.err, c.name)
				return 2
			}
			fmt.Fprintf(stderr, "adpulse %s: %v\n", c.name, err)
			return 1
		}
	}
	switch args[0] {
	case "-h", "--help":
		usage(stdout)
		return 0
	case "-v", "--version", "-version":
		fmt.Fprintln(stdout, versionString())
		return 0
	}
	fmt.Fprintf(stderr, "adpulse: unknown subcommand %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "adpulse: ad event tracking, exact real-time metrics and budget charging\n\nUsage: adpulse <subcommand> [flags]\n\nSubcommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'adpulse <subcommand> -h' for its flags. Every flag can also be set as an environment\nvariable: --click-secret is ADPULSE_CLICK_SECRET.")
}

func versionString() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " " + s.Value[:12]
			}
		}
		v += " " + bi.GoVersion
	}
	return "adpulse " + v
}

// parseFlags parses args, then fills every flag not given on the command line from its
// ADPULSE_* environment variable.
func parseFlags(fs *flag.FlagSet, args []string) error {
	cliflag.DescribeEnv(fs)
	// The flag package would print its error and every flag on any mistake; adpulse prints
	// the one error and where to look, and the flags only when asked (-h).
	out := fs.Output()
	fs.SetOutput(io.Discard)
	err := cliflag.Parse(fs, args, os.LookupEnv)
	fs.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprintf(out, "Usage: adpulse %s [flags]\n\nEvery flag can also be set by the environment variable named after it.\n\n", fs.Name())
		fs.PrintDefaults()
		return err
	case err != nil:
		return usageError{err}
	}
	return nil
}

// usageError is a mistake in how adpulse was called (a flag, a variable, the configuration):
// exit status 2, like the flag package's own.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// errReported marks an error already written to the log.
var errReported = errors.New("reported")

// errReportedUsage is a usage error already logged, in the log's format: exit 2.
var errReportedUsage = errors.New("reported usage error")

// jsonUsageError returns err as a usage error; with JSON logs it logs it as one JSON line
// first, so a log collector sees why the process would not start.
func jsonUsageError(logger *slog.Logger, format string, err error) error {
	if format != "json" {
		return usageError{err}
	}
	logger.Error("invalid configuration; adpulse serve -h lists the flags", "err", err.Error())
	return errReportedUsage
}

func serveFlags(fs *flag.FlagSet, c *config.Config) {
	fs.Func("roles", "comma-separated roles of this process: ingest, process, query (default all three), and cron (scheduled jobs; never by default)", func(v string) error {
		c.Roles = strings.Split(v, ",")
		return nil
	})
	fs.StringVar(&c.CronConfig, "cron-config", c.CronConfig, "jobs file of the cron role (--roles ...,cron): scheduled imports, exports and reconciles")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "directory holding all embedded state")
	fs.StringVar(&c.Listen, "listen", c.Listen, "API listen address")
	fs.StringVar(&c.OpsListen, "ops-listen", c.OpsListen, "ops listen address (Prometheus /metrics, /healthz, /readyz, pprof)")
	fs.StringVar(&c.AdminKey, "admin-key", c.AdminKey, "admin API key (generated and stored in the data dir when empty)")
	fs.StringVar(&c.ClickSecret, "click-secret", c.ClickSecret, "click token secret, or a keyring 'id:secret,id:secret' whose first key signs (generated when empty)")
	fs.StringVar(&c.PublicURL, "public-url", c.PublicURL, "base URL of click and impression URLs (default: the listen address)")
	fs.DurationVar(&c.ClickTTL, "click-ttl", c.ClickTTL, "click validity window; older clicks redirect but count as invalid")
	fs.DurationVar(&c.MaxLateness, "max-lateness", c.MaxLateness, "oldest event_time accepted by POST /events")
	fs.DurationVar(&c.MaxClockSkew, "max-clock-skew", c.MaxClockSkew, "how far in the future an event_time may be")
	fs.DurationVar(&c.DedupWindow, "dedup-window", c.DedupWindow, "how long an idempotency key is remembered")
	fs.DurationVar(&c.StreamDedupWindow, "stream-dedup-window", c.StreamDedupWindow, "how long aggregation and user views remember a key to drop an event that reached the log twice (0: --dedup-window; negative: off; 20-28 bytes per event per stage)")
	fs.Int64Var(&c.MaxBody, "max-body", c.MaxBody, "largest POST /events body in bytes")
	fs.IntVar(&c.MaxBatch, "max-batch", c.MaxBatch, "most events in one POST /events body")
	fs.IntVar(&c.Partitions, "partitions", c.Partitions, "event log partitions (fixed when the data dir is created)")
	fs.DurationVar(&c.CatalogSnapshotInterval, "catalog-snapshot-interval", c.CatalogSnapshotInterval, "how often the catalog index is written to a snapshot in --data-dir (and at shutdown), so a restart loads it instead of reading every ad from the database; 0: off")
	fs.StringVar(&c.CatalogDSN, "catalog-dsn", c.CatalogDSN, "catalog database: postgres://user@host:5432/db?sslmode=disable, mysql://user:pass@tcp(host:3306)/db, or sqlite:PATH (default: catalog.db in --data-dir)")
	fs.StringVar(&c.EventLog, "event-log", c.EventLog, "event log: local (segment files in --data-dir) or kafka")
	fs.Func("kafka-brokers", "comma-separated Kafka seed brokers host:port (with --event-log kafka)", func(v string) error {
		c.KafkaBrokers = strings.Split(v, ",")
		return nil
	})
	fs.StringVar(&c.KafkaTopic, "kafka-topic", c.KafkaTopic, "Kafka topic of the event log (created if missing)")
	fs.Int64Var(&c.ReadyMaxLag, "ready-max-lag", c.ReadyMaxLag, "a process node without the ingest role answers /readyz with 503 while a partition it consumes is more than this many messages behind (0: off)")
	fs.StringVar(&c.LedgerPrefix, "ledger-prefix", c.LedgerPrefix, "prefix of the shared ledger's table names in the --catalog-dsn database (with --metric-store clickhouse): one per deployment sharing a database; [a-z0-9_], at most 32 characters")
	fs.StringVar(&c.KafkaGroup, "kafka-group", c.KafkaGroup, "Kafka consumer group through which process nodes share the log's partitions (with --metric-store clickhouse)")
	fs.StringVar(&c.MetricStore, "metric-store", c.MetricStore, "metric store: pebble (in --data-dir; one process node) or clickhouse (shared by every process and query node)")
	fs.StringVar(&c.ClickHouseAddr, "clickhouse-addr", c.ClickHouseAddr, "ClickHouse native protocol host:port (with --metric-store clickhouse)")
	fs.StringVar(&c.ClickHouseDatabase, "clickhouse-database", c.ClickHouseDatabase, "ClickHouse database of the metric store (created if missing)")
	fs.StringVar(&c.ClickHouseUser, "clickhouse-user", c.ClickHouseUser, "ClickHouse user (default: the server's default user)")
	fs.StringVar(&c.ClickHousePassword, "clickhouse-password", c.ClickHousePassword, "ClickHouse password")
	fs.IntVar(&c.KafkaReplicationFactor, "kafka-replication-factor", c.KafkaReplicationFactor, "replicas of a topic adpulse creates")
	fs.DurationVar(&c.KafkaDeliveryTimeout, "kafka-delivery-timeout", c.KafkaDeliveryTimeout, "how long an append may wait for acks=all before it fails")
	fs.StringVar(&c.Dedup, "dedup", c.Dedup, "idempotency keys: memory (in process, rebuilt from the log) or redis (shared by ingest processes)")
	fs.StringVar(&c.RedisAddr, "redis-addr", c.RedisAddr, "Redis host:port (with --dedup redis)")
	fs.StringVar(&c.RedisPassword, "redis-password", c.RedisPassword, "Redis password")
	fs.StringVar(&c.ServingRedisAddr, "serving-redis-addr", c.ServingRedisAddr, "Redis host:port the ad servers read: the serving feed and users' daily catalog views are published there within a second (process role; empty: not published)")
	fs.StringVar(&c.ServingRedisPassword, "serving-redis-password", c.ServingRedisPassword, "password of --serving-redis-addr")
	fs.StringVar(&c.ServingRedisPrefix, "serving-redis-prefix", c.ServingRedisPrefix, "prefix of every key adpulse writes to --serving-redis-addr (docs/redis-layout.md)")
	fs.DurationVar(&c.DedupReserveTTL, "dedup-reserve-ttl", c.DedupReserveTTL, "how long a Redis reservation lives before its append is confirmed")
	fs.Int64Var(&c.SegmentBytes, "segment-bytes", c.SegmentBytes, "event log segment size")
	fs.DurationVar(&c.LogRetention, "log-retention", c.LogRetention, "how long raw events stay in the event log")
	fs.DurationVar(&c.MinuteRetention, "minute-retention", c.MinuteRetention, "how long one-minute metric buckets are kept")
	fs.Func("conversion-types", "comma-separated event types that POST /events takes as conversions to attribute when sent without an ad_id (default order)", func(v string) error {
		c.ConversionTypes = strings.Split(v, ",")
		return nil
	})
	fs.DurationVar(&c.AttributionClickWindow, "attribution-click-window", c.AttributionClickWindow, "how long after a click a conversion is credited to it")
	fs.DurationVar(&c.AttributionViewWindow, "attribution-view-window", c.AttributionViewWindow, "how long after a view a conversion is credited to it")
	fs.StringVar(&c.AttributionWindows, "attribution-windows", c.AttributionWindows, "per-advertiser attribution windows, click/view: 'adv1=14d/1d,adv2=720h/0'")
	fs.IntVar(&c.AttributionMaxTouches, "attribution-max-touches", c.AttributionMaxTouches, "touches remembered per user and catalog (the oldest goes first)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "text or json")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "how long in-flight requests may take on shutdown before their connections are cut")
	fs.StringVar(&c.MemoryLimit, "memory-limit", c.MemoryLimit, "memory budget of the whole process, such as 4GiB or 60% (of the container's limit, else of the machine's memory): the garbage collector runs as often as it must to keep within it, less what Pebble holds outside the Go heap; auto: 90% of a container's limit, none without one (GOMEMLIMIT then applies); off: none")
	fs.DurationVar(&c.BackendTimeout, "backend-timeout", c.BackendTimeout, "deadline of every call to the event log, Redis and the other backends")
	fs.DurationVar(&c.InFlightWait, "in-flight-wait", c.InFlightWait, "how long a retry waits for an earlier attempt of the same event to finish before answering 503")
	fs.IntVar(&c.HotAdSalts, "hot-ad-salts", c.HotAdSalts, "spread an ad that takes a large share of the events over this many partitions (0: off; needs --dedup memory)")
	fs.Float64Var(&c.HotAdShare, "hot-ad-share", c.HotAdShare, "share of one second's events that makes an ad hot (it stays hot down to half of it)")
	fs.Int64Var(&c.HotAdMinEvents, "hot-ad-min-events", c.HotAdMinEvents, "events an ingest process must take in a second before it judges any ad hot")
	fs.DurationVar(&c.HotAdCooldown, "hot-ad-cooldown", c.HotAdCooldown, "how long an ad stays salted after it stopped being hot")
	fs.Float64Var(&c.RateLimitIP, "rate-limit-ip", c.RateLimitIP, "requests per second per source address on the public endpoints and without a valid key (0: off)")
	fs.IntVar(&c.RateLimitIPBurst, "rate-limit-ip-burst", c.RateLimitIPBurst, "requests a source address may send at once")
	fs.Float64Var(&c.RateLimitKey, "rate-limit-key", c.RateLimitKey, "requests per second per API key on the authenticated API (0: off)")
	fs.IntVar(&c.RateLimitKeyBurst, "rate-limit-key-burst", c.RateLimitKeyBurst, "requests an API key may send at once")
	fs.IntVar(&c.RateLimitEntries, "rate-limit-entries", c.RateLimitEntries, "source addresses (and keys) remembered at once; beyond, new sources share an overflow limit")
	fs.StringVar(&c.ArchiveURL, "archive-url", c.ArchiveURL, "where the process role archives every raw event as Parquet: a directory, s3://bucket/prefix, or off (default: archive/ in --data-dir)")
	fs.DurationVar(&c.ArchiveInterval, "archive-interval", c.ArchiveInterval, "an event is in the archive within about this (plus a few seconds); divides an hour")
	fs.DurationVar(&c.ArchiveRetention, "archive-retention", c.ArchiveRetention, "delete archived days older than this (0: keep everything)")
	fs.StringVar(&c.ArchiveS3Endpoint, "archive-s3-endpoint", c.ArchiveS3Endpoint, "S3 API host[:port] of an s3:// --archive-url (default s3.amazonaws.com)")
	fs.StringVar(&c.ArchiveS3Region, "archive-s3-region", c.ArchiveS3Region, "S3 region of an s3:// --archive-url")
	fs.StringVar(&c.ArchiveS3AccessKey, "archive-s3-access-key", c.ArchiveS3AccessKey, "S3 access key (default: AWS_ACCESS_KEY_ID, ~/.aws/credentials or the instance role)")
	fs.StringVar(&c.ArchiveS3SecretKey, "archive-s3-secret-key", c.ArchiveS3SecretKey, "S3 secret key (with --archive-s3-access-key)")
	fs.BoolVar(&c.ArchiveS3Insecure, "archive-s3-insecure", c.ArchiveS3Insecure, "talk http, not https, to --archive-s3-endpoint (a local MinIO)")
	fs.BoolVar(&c.ArchiveS3PathStyle, "archive-s3-path-style", c.ArchiveS3PathStyle, "address buckets as endpoint/bucket (MinIO and most S3-compatible stores)")
	fs.StringVar(&c.FeedsURL, "feeds-url", c.FeedsURL, "where data-science feeds (auto_cpc, budget_recommendations) are dropped: a directory, s3://bucket/prefix, or off; process nodes load complete versions (docs/bulk.md)")
	fs.DurationVar(&c.FeedsInterval, "feeds-interval", c.FeedsInterval, "how often process nodes look for new feed versions in --feeds-url")
	fs.IntVar(&c.FeedsKeep, "feeds-keep", c.FeedsKeep, "loaded versions per feed whose rows are kept for rollback")
	fs.Int64Var(&c.FeedsMaxRows, "feeds-max-rows", c.FeedsMaxRows, "rows of one feed version; a larger version is rejected")
	fs.StringVar(&c.FeedsS3Endpoint, "feeds-s3-endpoint", c.FeedsS3Endpoint, "S3 API host[:port] of an s3:// --feeds-url (default s3.amazonaws.com)")
	fs.StringVar(&c.FeedsS3Region, "feeds-s3-region", c.FeedsS3Region, "S3 region of an s3:// --feeds-url")
	fs.StringVar(&c.FeedsS3AccessKey, "feeds-s3-access-key", c.FeedsS3AccessKey, "S3 access key of --feeds-url (default: AWS_ACCESS_KEY_ID, ~/.aws/credentials or the instance role)")
	fs.StringVar(&c.FeedsS3SecretKey, "feeds-s3-secret-key", c.FeedsS3SecretKey, "S3 secret key (with --feeds-s3-access-key)")
	fs.BoolVar(&c.FeedsS3Insecure, "feeds-s3-insecure", c.FeedsS3Insecure, "talk http, not https, to --feeds-s3-endpoint (a local MinIO)")
	fs.BoolVar(&c.FeedsS3PathStyle, "feeds-s3-path-style", c.FeedsS3PathStyle, "address buckets as endpoint/bucket (MinIO and most S3-compatible stores)")
	fs.StringVar(&c.Reconcile, "reconcile", c.Reconcile, "for each closed hour once archived, the process role recomputes the metrics from the archive: repair (and correct differences), check (report them) or off")
	fs.BoolVar(&c.IVTRules, "ivt-rules", c.IVTRules, "run the behavioural invalid-traffic rules (floods, clicks without or too soon after an impression, many ads) and credit flagged clicks back (off by default: it refunds money; tune the thresholds first)")
	fs.DurationVar(&c.IVTFloodWindow, "ivt-flood-window", c.IVTFloodWindow, "window of the click-flood rules")
	fs.IntVar(&c.IVTMaxClicksPerUser, "ivt-max-clicks-per-user", c.IVTMaxClicksPerUser, "most clicks one user id may make within --ivt-flood-window (0: rule off)")
	fs.IntVar(&c.IVTMaxClicksPerIP, "ivt-max-clicks-per-ip", c.IVTMaxClicksPerIP, "most clicks one source address may make within --ivt-flood-window (0: rule off)")
	fs.IntVar(&c.IVTMaxClicksPerDevice, "ivt-max-clicks-per-device", c.IVTMaxClicksPerDevice, "most clicks one device may make within --ivt-flood-window (0: rule off)")
	fs.DurationVar(&c.IVTImpressionWindow, "ivt-impression-window", c.IVTImpressionWindow, "how long impressions are remembered for the no-impression and too-fast rules")
	fs.BoolVar(&c.IVTNoImpression, "ivt-no-impression", c.IVTNoImpression, "flag clicks with no impression on ads whose impressions are tracked")
	fs.DurationVar(&c.IVTMinClickDelay, "ivt-min-click-delay", c.IVTMinClickDelay, "shortest time from an impression to its click a person needs (0: rule off)")
	fs.DurationVar(&c.IVTManyAdsWindow, "ivt-many-ads-window", c.IVTManyAdsWindow, "window of the many-ads rule")
	fs.IntVar(&c.IVTMaxAdsPerSource, "ivt-max-ads-per-source", c.IVTMaxAdsPerSource, "most distinct ads one source (user id, else address) may click within --ivt-many-ads-window (0: rule off)")
	fs.Func("trusted-proxies", "comma-separated CIDRs of proxies whose X-Forwarded-For names the source address (default none: the TCP peer is the source)", func(v string) error {
		c.TrustedProxies = nil
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			p, err := netip.ParsePrefix(s)
			if err != nil {
				a, aerr := netip.ParseAddr(s)
				if aerr != nil {
					return fmt.Errorf("%q is not a CIDR or an address", s)
				}
				p = netip.PrefixFrom(a.WithZone(""), a.BitLen())
			}
			c.TrustedProxies = append(c.TrustedProxies, p)
		}
		return nil
	})
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

func serve(args []string, _, stderr io.Writer) error {
	cfg := config.Default()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	serveFlags(fs, &cfg)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	logger, err := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return usageError{err}
	}
	cfg.Version = version
	if err := cfg.Validate(); err != nil {
		// Nothing has been written to the data dir yet.
		return jsonUsageError(logger, cfg.LogFormat, err)
	}
	if cfg.CatalogDSN != "" {
		if _, _, _, err := catalog.ParseDSN(cfg.CatalogDSN); err != nil {
			return jsonUsageError(logger, cfg.LogFormat, fmt.Errorf("--catalog-dsn: %w", err))
		}
	}
	app, err := server.New(cfg, logger)
	if err == nil {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		ctx, handedOff := context.WithCancel(ctx)
		defer handedOff()
		go restartOnSignal(ctx, app, logger, handedOff)
		logger.Info("starting adpulse", "version", versionString(), "data_dir", cfg.DataDir, "pid", os.Getpid())
		err = app.Run(ctx)
	}
	if err != nil && cfg.LogFormat == "json" {
		// A log collector reads JSON lines: the fatal error must be one too.
		logger.Error("adpulse stopped with an error", "err", err.Error())
		return errReported
	}
	return err
}

// restartOnSignal restarts the server in place on SIGUSR2: a new process (the executable now
// at this path) takes the listening sockets over, and this one drains and exits 0, so an
// upgrade refuses no connection (server.App.Handoff).
func restartOnSignal(ctx context.Context, app *server.App, logger *slog.Logger, stop context.CancelFunc) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR2)
	defer signal.Stop(sig)
	for {
		select {
		case <-ctx.Done():
			return
		case <-sig:
		}
		select {
		case <-app.Ready():
		default:
			logger.Warn("SIGUSR2 ignored: not serving yet")
			continue
		}
		if _, err := app.Handoff(); err != nil {
			logger.Error("restart in place failed; still serving", "err", err)
			continue
		}
		stop()
		return
	}
}

func sign(args []string, stdout, stderr io.Writer) error {
	cfg := config.Default()
	fs := flag.NewFlagSet("sign", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "data dir whose stored click secret signs (when --click-secret is not given)")
	fs.StringVar(&cfg.ClickSecret, "click-secret", "", "click token secret or keyring")
	fs.StringVar(&cfg.PublicURL, "public-url", "http://localhost:8080", "base URL of the printed URLs")
	var c clicktoken.Claims
	fs.StringVar(&c.AdID, "ad-id", "", "ad id (required)")
	fs.StringVar(&c.ImpressionID, "impression-id", "", "impression id (default: a random one)")
	fs.StringVar(&c.UserID, "user-id", "", "user id (optional)")
	fs.Int64Var(&c.PriceMicros, "cpc-micros", 0, "click price in micros (default: the ad's bid)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if c.AdID == "" {
		return errors.New("--ad-id is required")
	}
	if c.ImpressionID == "" {
		c.ImpressionID = fmt.Sprintf("imp-%d", time.Now().UnixNano())
	}
	if cfg.ClickSecret == "" {
		b, err := os.ReadFile(filepath.Join(cfg.DataDir, "secrets", "click-secret"))
		if err != nil {
			return fmt.Errorf("no --click-secret and none stored in the data dir: %w", err)
		}
		cfg.ClickSecret = strings.TrimSpace(string(b))
	}
	kr, err := clicktoken.ParseKeyring(cfg.ClickSecret)
	if err != nil {
		return err
	}
	c.IssuedAt = time.Now()
	tok, err := kr.Sign(c)
	if err != nil {
		return err
	}
	base := strings.TrimRight(cfg.PublicURL, "/")
	fmt.Fprintf(stdout, "click_url=%s/c/%s\nimpression_url=%s/i/%s\n", base, tok, base, tok)
	return nil
}
