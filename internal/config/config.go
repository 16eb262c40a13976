// Package config is the configuration of an adpulse process. cmd/adpulse fills it from flags
// and ADPULSE_* environment variables; nothing under internal/ reads either, so every part can
// be built in a test with exactly the settings it needs.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
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
	// that reached the log twice (0: DedupWindow; negative: off). About 48 bytes per event
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
	// BackendTimeout bounds every call to the event log, the dedup store and the other
	// backends; a request past it gets 503.
	BackendTimeout time.Duration
	// ReadyMaxLag: a process node answers /readyz with 503 while a partition it consumes is
	// more than this many messages behind the log's end (0: lag never makes it unready).
	ReadyMaxLag int64
	// InFlightWait bounds how long a retry waits for an earlier attempt of the same event.
	InFlightWait time.Duration

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

// Roles of a process.
const (
	RoleIngest  = "ingest"  // GET /c, GET /i, POST /click, POST /events
	RoleProcess = "process" // aggregation, charging, user views, the serving feed
	RoleQuery   = "query"   // /metrics, /metrics/top, budgets, serving feed and views reads
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
		Roles:                  AllRoles,
		DataDir:                "./adpulse-data",
		Listen:                 ":8080",
		OpsListen:              "127.0.0.1:9464",
		ClickTTL:               time.Hour,
		MaxLateness:            24 * time.Hour,
		MaxClockSkew:           5 * time.Minute,
		DedupWindow:            24 * time.Hour,
		MaxBody:                10 << 20,
		MaxBatch:               100_000,
		EventLog:               "local",
		KafkaTopic:             "adpulse-events",
		KafkaGroup:             "adpulse-process",
		LedgerPrefix:           "billing_",
		ReadyMaxLag:            1_000_000,
		MetricStore:            "pebble",
		ClickHouseDatabase:     "adpulse",
		KafkaReplicationFactor: 3,
		KafkaDeliveryTimeout:   10 * time.Second,
		Dedup:                  "memory",
		DedupReserveTTL:        30 * time.Second,
		Partitions:             8,
		SegmentBytes:           128 << 20,
		LogRetention:           7 * 24 * time.Hour,
		MinuteRetention:        14 * 24 * time.Hour,
		LogLevel:               "info",
		LogFormat:              "text",
		ShutdownTimeout:        30 * time.Second,
		BackendTimeout:         10 * time.Second,
		ServingRedisPrefix:     "adpulse:",
		InFlightWait:           3 * time.Second,
		RateLimitIP:            1000,
		RateLimitIPBurst:       10000,
		RateLimitKey:           2000,
		RateLimitKeyBurst:      10000,
		RateLimitEntries:       100_000,
		IVTRules:               false,
		IVTFloodWindow:         time.Minute,
		IVTImpressionWindow:    10 * time.Minute,
		IVTManyAdsWindow:       10 * time.Minute,
		IVTMaxClicksPerUser:    10,
		IVTMaxClicksPerIP:      30,
		IVTMaxClicksPerDevice:  10,
		IVTMaxAdsPerSource:     20,
		IVTNoImpression:        true,
		IVTMinClickDelay:       time.Second,
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
	check(c.Dedup != "redis" || c.RedisAddr != "", "--dedup redis needs --redis-addr")
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
		check(r == RoleIngest || r == RoleProcess || r == RoleQuery, "--roles: unknown role %q (want a comma-separated subset of ingest, process, query)", r)
		check(!seen[r], "--roles: %q given twice", r)
		seen[r] = true
	}
	check(len(c.Roles) > 0, "--roles must name at least one of ingest, process, query")
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
