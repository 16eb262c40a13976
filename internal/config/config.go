// Package config is the configuration of an adpulse process. cmd/adpulse fills it from flags
// and ADPULSE_* environment variables; nothing under internal/ reads either, so every part can
// be built in a test with exactly the settings it needs.
package config

import (
	"errors"
	"fmt"
	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/memlimit"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Config holds every setting of `adpulse serve`.
type Config struct {
	// Roles is what this process does: a subset of Ingest, Process and Query (default all).
	Roles []string
	// Version names the binary (adpulse_build_info); set by main, not a flag.
	Version string

	DataDir     string
	Listen      string
	OpsListen   string
	AdminKey    string // generated and stored in DataDir when empty
	ClickSecret string // keyring spec "id:secret,..." (first signs) or one secret
	PublicURL   string // base of click URLs; derived from Listen when empty

	ClickTTL     time.Duration
	MaxLateness  time.Duration
	MaxClockSkew time.Duration
	DedupWindow  time.Duration
	// StreamDedupWindow is how long the stages after the log remember a key to drop an event
	// that reached the log twice (0: DedupWindow; negative: off). 20-28 bytes per event
	// received within it, per stage.
	StreamDedupWindow time.Duration
	MaxBody           int64
	MaxBatch          int

	// EventLog is "local" (segment files in DataDir) or "kafka".
	EventLog               string
	KafkaBrokers           []string
	KafkaTopic             string
	KafkaReplicationFactor int
	KafkaDeliveryTimeout   time.Duration
	// KafkaGroup is the consumer group through which process nodes share the log's
	// partitions (with --metric-store clickhouse).
	KafkaGroup string
	// LedgerPrefix starts the names of the shared ledger's tables in the --catalog-dsn
	// database (with --metric-store clickhouse), so one database can hold several deployments.
	LedgerPrefix string
	// MetricStore is "pebble" (in DataDir; one process node) or "clickhouse" (shared by every
	// process and query node).
	MetricStore        string
	ClickHouseAddr     string
	ClickHouseDatabase string
	ClickHouseUser     string
	ClickHousePassword string
	// CatalogDSN selects the catalog database: "" is SQLite (catalog.db in DataDir);
	// postgres://... and mysql://... share one catalog between processes.
	CatalogDSN string
	// CatalogSnapshotInterval is how often the catalog's in-memory index is written to a
	// snapshot in DataDir (also at clean shutdown), so a restart skips reading every ad from
	// the database; 0 turns the snapshot off.
	CatalogSnapshotInterval time.Duration
	// Dedup is "memory" (in process, rebuilt from the log on start) or "redis" (shared by
	// every ingest process).
	Dedup           string
	RedisAddr       string
	RedisPassword   string
	DedupReserveTTL time.Duration
	// ServingRedisAddr, when set, is the Redis the ad servers read: the process role
	// publishes the serving feed and each user's daily catalog views there.
	ServingRedisAddr     string
	ServingRedisPassword string
	ServingRedisPrefix   string // of every key there (default "adpulse:")

	Partitions      int
	SegmentBytes    int64
	LogRetention    time.Duration
	MinuteRetention time.Duration

	LogLevel  string
	LogFormat string // "text" or "json"

	ShutdownTimeout time.Duration
	// MemoryLimit is the process's memory budget (memlimit.Parse): "auto" (90 % of a
	// container's limit, none without one), a size, a share of memory, or "off".
	MemoryLimit string
	// BackendTimeout bounds every call to the event log, the dedup store and the other
	// backends; a request past it gets 503.
	BackendTimeout time.Duration
	// ReadyMaxLag: a process node answers /readyz with 503 while a partition it consumes is
	// more than this many messages behind the log's end (0: lag never makes it unready).
	ReadyMaxLag int64
	// InFlightWait bounds how long a retry waits for an earlier attempt of the same event.
	InFlightWait time.Duration

	// HotAdSalts spreads an ad that an ingest process finds hot over this many partitions
	// (0 or 1: off). HotAdShare is the share of a second's events that makes an ad hot
	// (it stays hot down to half of it, and HotAdCooldown longer); HotAdMinEvents the
	// events a second needs before any ad is judged.
	HotAdSalts     int
	HotAdShare     float64
	HotAdMinEvents int64
	HotAdCooldown  time.Duration

	// Rate limits in requests per second, with a burst: per source address (the public
	// endpoints, and requests without a valid key) and per API key (the authenticated API).
	// A rate of 0 turns that limit off. RateLimitEntries caps the sources (and the keys)
	// remembered at once.
	RateLimitIP, RateLimitKey           float64
	RateLimitIPBurst, RateLimitKeyBurst int
	RateLimitEntries                    int
	// TrustedProxies are the peers whose X-Forwarded-For names a request's source; from
	// anyone else the TCP peer is the source.
	TrustedProxies []netip.Prefix
	// CronConfig is the jobs file of the cron role (docs/operations.md).
	CronConfig string

	// ArchiveURL is where the process role archives the raw log as Parquet: a directory
	// ("" is archive/ in DataDir), s3://bucket/prefix, or "off".
	ArchiveURL string
	// ArchiveInterval is the receive-time window of an archive file (divides an hour).
	ArchiveInterval time.Duration
	// ArchiveRetention deletes archived days older than it (0 keeps all).
	ArchiveRetention time.Duration
	// ArchiveS3Endpoint, ArchiveS3Region and the keys configure an s3:// ArchiveURL; empty
	// keys take the usual AWS credential chain. ArchiveS3Insecure uses http.
	ArchiveS3Endpoint, ArchiveS3Region     string
	ArchiveS3AccessKey, ArchiveS3SecretKey string
	ArchiveS3Insecure, ArchiveS3PathStyle  bool
	// FeedsURL is where data-science feeds are dropped (internal/feeds): a directory,
	// s3://bucket/prefix, or "off". Process nodes poll it every FeedsInterval and load
	// complete versions into the catalog database, keeping the rows of FeedsKeep versions
	// per feed; FeedsMaxRows bounds one version.
	FeedsURL      string
	FeedsInterval time.Duration
	FeedsKeep     int
	FeedsMaxRows  int64
	// FeedsS3Endpoint and the rest configure an s3:// FeedsURL, as ArchiveS3* do.
	FeedsS3Endpoint, FeedsS3Region     string
	FeedsS3AccessKey, FeedsS3SecretKey string
	FeedsS3Insecure, FeedsS3PathStyle  bool
	// Reconcile is what the process role does for each closed hour once archived:
	// "repair" (compare and correct), "check" (compare and report) or "off".
	Reconcile string
	// ConversionTypes are the event types that POST /events takes as conversions when they
	// come without an ad_id (user_id, catalog_id, event_id and value_micros instead).
	ConversionTypes []string
	// AttributionClickWindow and AttributionViewWindow are how long after a click or a view
	// a conversion is credited to it, unless AttributionWindows names the advertiser
	// ("adv1=14d/1d,adv2=30d/0": per advertiser, click window / view window).
	AttributionClickWindow time.Duration
	AttributionViewWindow  time.Duration
	AttributionWindows     string
	// AttributionMaxTouches bounds the touches remembered per user and catalog.
	AttributionMaxTouches int

	// Behavioural invalid-traffic rules (the process role's ivt stage, internal/ivt/sivt).
	// Off unless IVTRules: the stage refunds money, so an operator turns it on once the
	// thresholds suit the traffic. A limit of 0 turns its rule off.
	IVTRules                                              bool
	IVTFloodWindow, IVTImpressionWindow, IVTManyAdsWindow time.Duration
	IVTMaxClicksPerUser, IVTMaxClicksPerIP                int
	IVTMaxClicksPerDevice, IVTMaxAdsPerSource             int
	IVTNoImpression                                       bool
	IVTMinClickDelay                                      time.Duration
}

// conversionTypeRE is what an interaction (and so a conversion type) may be called.
var conversionTypeRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)

// MaxAttributionWindow bounds every attribution window (a touch is remembered that long).
const MaxAttributionWindow = catalog.MaxAttributionWindow

// Roles of a process.
const (
	RoleIngest  = "ingest"  // GET /c, GET /i, POST /click, POST /events
	RoleProcess = "process" // aggregation, charging, user views, the serving feed
	RoleQuery   = "query"   // /metrics, /metrics/top, budgets, serving feed and views reads
	// RoleCron runs the scheduled jobs of --cron-config (imports, exports, reconciles). It is
	// not in AllRoles: it is asked for by name.
	RoleCron = "cron"
)

// AllRoles is the default: one process does everything.
var AllRoles = []string{RoleIngest, RoleProcess, RoleQuery}

// Has reports whether the process runs role.
func (c *Config) Has(role string) bool {
	for _, r := range c.Roles {
		if r == role {
			return true
		}
	}
	return false
}

// StreamDedupSpan is the span of the stream stages' duplicate filter (negative: off).
func (c *Config) StreamDedupSpan() time.Duration {
	if c.StreamDedupWindow == 0 {
		return c.DedupWindow
	}
	return c.StreamDedupWindow
}

// SharedProcessing reports whether process nodes share the log's partitions through the
// Kafka consumer group (and so their outputs must be in shared stores).
func (c *Config) SharedProcessing() bool { return c.MetricStore == "clickhouse" }

// MaxHold is how long after its receive time ingest may still hand an event to the log.
func (c *Config) MaxHold() time.Duration { return c.InFlightWait + time.Second }

// StreamSlack is how far receive times may run out of order within a log partition: an
// event waits at most MaxHold before its append starts, and the append takes at most the
// backend timeout (or Kafka's delivery timeout). The stages after the log hold finality and
// size their duplicate filter's replay by it.
func (c *Config) StreamSlack() time.Duration {
	appendTime := c.BackendTimeout
	if c.EventLog == "kafka" {
		appendTime = max(appendTime, c.KafkaDeliveryTimeout)
	}
	return c.MaxHold() + appendTime + time.Second
}

// Default returns the defaults of the API contract.
func Default() Config {
	return Config{
		Roles:                   AllRoles,
		DataDir:                 "./adpulse-data",
		Listen:                  ":8080",
		OpsListen:               "127.0.0.1:9464",
		ClickTTL:                time.Hour,
		MaxLateness:             24 * time.Hour,
		MaxClockSkew:            5 * time.Minute,
		DedupWindow:             24 * time.Hour,
		CatalogSnapshotInterval: 5 * time.Minute,
		MaxBody:                 10 << 20,
		MaxBatch:                100_000,
		EventLog:                "local",
		KafkaTopic:              "adpulse-events",
		KafkaGroup:              "adpulse-process",
		LedgerPrefix:            "billing_",
		ReadyMaxLag:             1_000_000,
		MetricStore:             "pebble",
		ClickHouseDatabase:      "adpulse",
		KafkaReplicationFactor:  3,
		KafkaDeliveryTimeout:    10 * time.Second,
		Dedup:                   "memory",
		DedupReserveTTL:         30 * time.Second,
		Partitions:              8,
		SegmentBytes:            128 << 20,
		LogRetention:            7 * 24 * time.Hour,
		MinuteRetention:         14 * 24 * time.Hour,
		ConversionTypes:         []string{"order"},
		AttributionClickWindow:  7 * 24 * time.Hour,
		AttributionViewWindow:   24 * time.Hour,
		AttributionMaxTouches:   64,
		LogLevel:                "info",
		LogFormat:               "text",
		ShutdownTimeout:         30 * time.Second,
		MemoryLimit:             "auto",
		BackendTimeout:          10 * time.Second,
		ServingRedisPrefix:      "adpulse:",
		InFlightWait:            3 * time.Second,
		HotAdShare:              0.2,
		HotAdMinEvents:          1000,
		HotAdCooldown:           time.Minute,
		RateLimitIP:             1000,
		RateLimitIPBurst:        10000,
		RateLimitKey:            2000,
		RateLimitKeyBurst:       10000,
		RateLimitEntries:        100_000,
		ArchiveInterval:         5 * time.Minute,
		FeedsURL:                "off",
		FeedsInterval:           time.Minute,
		FeedsKeep:               5,
		FeedsMaxRows:            10_000_000,
		Reconcile:               "repair",
		IVTRules:                false,
		IVTFloodWindow:          time.Minute,
		IVTImpressionWindow:     10 * time.Minute,
		IVTManyAdsWindow:        10 * time.Minute,
		IVTMaxClicksPerUser:     10,
		IVTMaxClicksPerIP:       30,
		IVTMaxClicksPerDevice:   10,
		IVTMaxAdsPerSource:      20,
		IVTNoImpression:         true,
		IVTMinClickDelay:        time.Second,
	}
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.DataDir != "", "--data-dir must not be empty")
	if c.PublicURL != "" {
		u, err := url.Parse(c.PublicURL)
		check(err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && u.RawQuery == "" && u.Fragment == "",
			"--public-url %q must be an absolute http(s) URL with a host and no query, such as https://t.ads.example", c.PublicURL)
	}
	check(c.Listen != "", "--listen must not be empty")
	for _, l := range [...]struct{ flag, addr string }{{"--listen", c.Listen}, {"--ops-listen", c.OpsListen}} {
		if _, port, err := net.SplitHostPort(l.addr); l.addr != "" && (err != nil || port == "") {
			check(false, "%s %q must be host:port or :port, such as :8080 or 127.0.0.1:9464", l.flag, l.addr)
		}
	}
	check(c.ClickTTL > 0, "--click-ttl must be positive")
	check(c.MaxLateness >= time.Minute, "--max-lateness must be at least 1m")
	check(c.AttributionClickWindow >= 0 && c.AttributionClickWindow <= MaxAttributionWindow && c.AttributionViewWindow >= 0 && c.AttributionViewWindow <= MaxAttributionWindow,
		"--attribution-click-window and --attribution-view-window must be from 0 to %v", MaxAttributionWindow)
	check(c.AttributionMaxTouches >= 1 && c.AttributionMaxTouches <= 10_000, "--attribution-max-touches must be from 1 to 10000")
	for _, t := range c.ConversionTypes {
		check(conversionTypeRE.MatchString(t) && t != "impression" && t != "click", "--conversion-types: %q is not an event type name ([a-z][a-z0-9_]{0,31}, not impression or click)", t)
	}
	check(c.MaxClockSkew >= 0, "--max-clock-skew must not be negative")
	check(c.DedupWindow >= c.MaxLateness, "--dedup-window (%v) must cover --max-lateness (%v): a retry of a late event must still be recognised", c.DedupWindow, c.MaxLateness)
	check(c.MaxBody >= 1<<10, "--max-body must be at least 1KiB")
	check(c.MaxBatch >= 1, "--max-batch must be at least 1")
	check(c.Partitions >= 1 && c.Partitions <= 1024, "--partitions must be 1-1024")
	check(c.SegmentBytes >= 1<<20, "--segment-bytes must be at least 1MiB")
	check(c.LogRetention >= c.DedupWindow, "--log-retention (%v) must cover --dedup-window (%v): dedup keys are rebuilt from the log", c.LogRetention, c.DedupWindow)
	c.checkRoles(check)
	check(c.BackendTimeout >= 10*time.Millisecond, "--backend-timeout must be at least 10ms")
	check(c.InFlightWait >= time.Millisecond && c.InFlightWait <= time.Minute, "--in-flight-wait must be 1ms-1m")
	check(c.ReadyMaxLag >= 0, "--ready-max-lag must not be negative (0 turns it off)")
	check(c.ShutdownTimeout >= 0, "--shutdown-timeout must not be negative")
	check(c.LogFormat == "text" || c.LogFormat == "json", "--log-format must be text or json")
	if _, err := memlimit.Parse(c.MemoryLimit); err != nil {
		errs = append(errs, fmt.Errorf("--memory-limit %w", err))
	}
	check(c.RateLimitIP >= 0 && c.RateLimitKey >= 0, "--rate-limit-ip and --rate-limit-key must not be negative (0 turns a limit off)")
	check(c.RateLimitIP == 0 || c.RateLimitIPBurst >= 1, "--rate-limit-ip-burst must be at least 1")
	check(c.RateLimitKey == 0 || c.RateLimitKeyBurst >= 1, "--rate-limit-key-burst must be at least 1")
	check(c.RateLimitEntries >= 1, "--rate-limit-entries must be at least 1")
	for _, w := range []struct {
		flag string
		d    time.Duration
	}{{"--ivt-flood-window", c.IVTFloodWindow}, {"--ivt-impression-window", c.IVTImpressionWindow}, {"--ivt-many-ads-window", c.IVTManyAdsWindow}} {
		// The stage holds every click of its windows in memory and replays them at start.
		check(!c.IVTRules || w.d >= time.Second && w.d <= 24*time.Hour, "%s must be 1s-24h", w.flag)
	}
	check(c.IVTMaxClicksPerUser >= 0 && c.IVTMaxClicksPerIP >= 0 && c.IVTMaxClicksPerDevice >= 0 && c.IVTMaxAdsPerSource >= 0,
		"--ivt-max-clicks-per-user, -ip, -device and --ivt-max-ads-per-source must not be negative (0 turns a rule off)")
	check(c.IVTMinClickDelay >= 0 && c.IVTMinClickDelay <= time.Minute, "--ivt-min-click-delay must be 0-1m (0 turns the rule off)")
	check(c.EventLog == "local" || c.EventLog == "kafka", "--event-log must be local or kafka")
	check(c.EventLog != "kafka" || len(c.KafkaBrokers) > 0, "--event-log kafka needs --kafka-brokers")
	check(c.Dedup == "memory" || c.Dedup == "redis", "--dedup must be memory or redis")
	check(c.MetricStore == "pebble" || c.MetricStore == "clickhouse", "--metric-store must be pebble or clickhouse")
	check(c.MetricStore != "clickhouse" || c.ClickHouseAddr != "", "--metric-store clickhouse needs --clickhouse-addr host:port (the native protocol port, 9000 by default)")
	check(c.MetricStore != "clickhouse" || c.EventLog == "kafka", "--metric-store clickhouse is shared by process nodes that share the log: it needs --event-log kafka")
	check(c.MetricStore != "clickhouse" || c.CatalogDSN != "", "--metric-store clickhouse needs --catalog-dsn postgres://... or mysql://...: the ledger beside the shared metric store is in the shared SQL database")
	check(c.EventLog != "kafka" || c.KafkaGroup != "", "--kafka-group must not be empty")
	check(!c.IVTRules || !c.SharedProcessing(), "--ivt-rules needs a single process node (the invalid-traffic stage reads every partition): not with --metric-store clickhouse")
	check(c.ArchiveInterval >= time.Second && time.Hour%c.ArchiveInterval == 0, "--archive-interval (%v) must divide an hour", c.ArchiveInterval)
	check(c.FeedsInterval >= time.Second, "--feeds-interval (%v) must be at least 1s", c.FeedsInterval)
	check(c.FeedsKeep >= 1, "--feeds-keep must be at least 1")
	check(c.FeedsMaxRows >= 1 && c.FeedsMaxRows <= 100_000_000, "--feeds-max-rows must be 1 to 100000000")
	check(c.ArchiveRetention >= 0, "--archive-retention must not be negative (0 keeps everything)")
	check(c.Reconcile == "repair" || c.Reconcile == "check" || c.Reconcile == "off", "--reconcile must be repair, check or off")
	check(c.Reconcile == "off" || c.ArchiveURL != "off", "--reconcile %s needs the archive: set --reconcile off with --archive-url off", c.Reconcile)
	check(c.Dedup != "redis" || c.RedisAddr != "", "--dedup redis needs --redis-addr")
	check(c.HotAdSalts >= 0 && c.HotAdSalts <= c.Partitions, "--hot-ad-salts must be 0-%d (--partitions)", c.Partitions)
	check(c.HotAdShare > 0 && c.HotAdShare <= 1, "--hot-ad-share must be in (0, 1]")
	check(c.HotAdMinEvents >= 1, "--hot-ad-min-events must be at least 1")
	check(c.HotAdCooldown >= 0 && c.HotAdCooldown <= 24*time.Hour, "--hot-ad-cooldown must be 0-24h")
	if c.HotAdSalts >= 2 {
		// Copies of one event may be placed in two partitions; the stages' duplicate filter
		// is per partition, so only a dedup store that never forgets a durable key keeps
		// counts exact (docs/design.md, "Partitioning and hot ads").
		check(c.Dedup == "memory", "--hot-ad-salts needs --dedup memory: a Redis reservation that expires forgets whether its event is durable, and a retry salted into another partition would then count twice")
		check(c.StreamDedupSpan() <= c.DedupWindow, "--hot-ad-salts needs --stream-dedup-window (%v) at most --dedup-window (%v)", c.StreamDedupSpan(), c.DedupWindow)
	}
	// A reservation must outlive the append it guards, or a retry could slip in while the
	// first attempt's records are still on their way to the brokers.
	check(c.Dedup != "redis" || c.DedupReserveTTL > c.KafkaDeliveryTimeout, "--dedup-reserve-ttl (%v) must exceed --kafka-delivery-timeout (%v)", c.DedupReserveTTL, c.KafkaDeliveryTimeout)
	return errors.Join(errs...)
}

// checkRoles checks --roles: known names, and the backends a split deployment needs. A
// process that does not run every role shares its work with others, which embedded state
// cannot do: the local log and in-process dedup keys belong to one process, and so does the
// embedded catalog.
func (c *Config) checkRoles(check func(bool, string, ...any)) {
	seen := map[string]bool{}
	for _, r := range c.Roles {
		check(r == RoleIngest || r == RoleProcess || r == RoleQuery || r == RoleCron, "--roles: unknown role %q (want a comma-separated subset of ingest, process, query, cron)", r)
		check(!seen[r], "--roles: %q given twice", r)
		seen[r] = true
	}
	check(len(c.Roles) > 0, "--roles must name at least one of ingest, process, query")
	if seen[RoleCron] {
		check(c.CronConfig != "", "--roles cron needs --cron-config FILE")
		delete(seen, RoleCron)
		if len(seen) == 0 {
			// Only scheduled jobs: they reach the other processes through the API, and the
			// lock through --catalog-dsn when there is a shared one.
			return
		}
	}
	if len(seen) == len(AllRoles) {
		return
	}
	check(c.EventLog == "kafka", "--roles %s shares the event log with other processes: it needs --event-log kafka", strings.Join(c.Roles, ","))
	check(c.CatalogDSN != "", "--roles %s shares the catalog with other processes: it needs --catalog-dsn postgres://... or mysql://...", strings.Join(c.Roles, ","))
	if seen[RoleIngest] {
		check(c.Dedup == "redis", "--roles %s takes events beside other ingest processes: it needs --dedup redis so a retry reaching another process is recognised", strings.Join(c.Roles, ","))
	}
	// Query nodes read what process nodes write. With the embedded metric store and ledger
	// that is only the same process.
	check(!seen[RoleQuery] || seen[RoleProcess] || c.MetricStore == "clickhouse", "--roles %s: a query node without the process role reads the shared metric store: it needs --metric-store clickhouse", strings.Join(c.Roles, ","))
}
