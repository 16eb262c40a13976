package config

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateNamesTheFlag(t *testing.T) {
	for _, tc := range []struct {
		mut  func(*Config)
		flag string
	}{
		{func(c *Config) { c.DedupWindow = time.Hour }, "--dedup-window"},
		{func(c *Config) { c.LogRetention = time.Hour }, "--log-retention"},
		{func(c *Config) { c.Partitions = 0 }, "--partitions"},
		{func(c *Config) { c.ClickTTL = 0 }, "--click-ttl"},
		{func(c *Config) { c.LogFormat = "xml" }, "--log-format"},
		{func(c *Config) { c.RateLimitIP = -1 }, "--rate-limit-ip"},
		{func(c *Config) { c.RateLimitKeyBurst = 0 }, "--rate-limit-key-burst"},
		{func(c *Config) { c.RateLimitEntries = 0 }, "--rate-limit-entries"},
		{func(c *Config) { c.ConversionTypes = []string{"order", "Order"} }, "--conversion-types"},
		{func(c *Config) { c.ConversionTypes = []string{"click"} }, "--conversion-types"},
		{func(c *Config) { c.AttributionClickWindow = 91 * 24 * time.Hour }, "--attribution-click-window"},
		{func(c *Config) { c.AttributionViewWindow = -time.Hour }, "--attribution-view-window"},
		{func(c *Config) { c.AttributionMaxTouches = 0 }, "--attribution-max-touches"},
		{func(c *Config) { c.HotAdSalts = c.Partitions + 1 }, "--hot-ad-salts"},
		{func(c *Config) { c.HotAdShare = 0 }, "--hot-ad-share"},
		{func(c *Config) { c.HotAdMinEvents = 0 }, "--hot-ad-min-events"},
		// Salting is exact only over a dedup store that never forgets a durable key.
		{func(c *Config) { c.HotAdSalts, c.Dedup, c.RedisAddr = 4, "redis", "127.0.0.1:6379" }, "--hot-ad-salts needs --dedup memory"},
		{func(c *Config) { c.HotAdSalts, c.StreamDedupWindow = 4, 2*c.DedupWindow }, "--stream-dedup-window"},
	} {
		c := Default()
		tc.mut(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("want an error naming %s, got %v", tc.flag, err)
		}
	}
}

func TestRolesNeedSharedBackends(t *testing.T) {
	shared := func(c *Config) {
		c.EventLog, c.KafkaBrokers = "kafka", []string{"k:9092"}
		c.Dedup, c.RedisAddr = "redis", "r:6379"
		c.DedupReserveTTL = time.Minute
		c.CatalogDSN = "postgres://db/adpulse"
	}
	for _, tc := range []struct {
		roles  []string
		shared bool
		want   string // substring of the error, "" for valid
	}{
		{AllRoles, false, ""},
		{[]string{"ingest", "process", "query"}, false, ""},
		{[]string{"ingest"}, false, "needs --event-log kafka"},
		{[]string{"process", "query"}, false, "needs --event-log kafka"},
		{[]string{"ingest"}, true, ""},
		{[]string{"process", "query"}, true, ""},
		{[]string{"query"}, true, "query node without the process role"},
		{[]string{"query"}, true, "--metric-store clickhouse"},
		{[]string{"ingest", "bogus"}, true, `unknown role "bogus"`},
		{[]string{"ingest", "ingest"}, true, "given twice"},
		{[]string{}, false, "at least one"},
	} {
		c := Default()
		c.Roles = tc.roles
		if tc.shared {
			shared(&c)
		}
		err := c.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("roles %v (shared %v): %v", tc.roles, tc.shared, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("roles %v (shared %v): %v, want an error saying %q", tc.roles, tc.shared, err, tc.want)
		}
	}
	c := Default()
	c.Roles = []string{"ingest"}
	shared(&c)
	c.Dedup = "memory"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--dedup redis") {
		t.Errorf("ingest-only with in-process dedup: %v", err)
	}
}

func TestMetricStoreFlags(t *testing.T) {
	base := func() Config {
		c := Default()
		c.EventLog, c.KafkaBrokers = "kafka", []string{"k:9092"}
		c.Dedup, c.RedisAddr, c.DedupReserveTTL = "redis", "r:6379", time.Minute
		c.CatalogDSN = "postgres://db/adpulse"
		c.MetricStore, c.ClickHouseAddr = "clickhouse", "ch:9000"
		return c
	}
	for _, tc := range []struct {
		change func(c *Config)
		want   string // "" for valid
	}{
		{func(c *Config) {}, ""},
		{func(c *Config) { c.Roles = []string{"query"} }, ""},
		{func(c *Config) { c.Roles = []string{"process"} }, ""},
		{func(c *Config) { c.MetricStore = "druid" }, "--metric-store must be pebble or clickhouse"},
		{func(c *Config) { c.ClickHouseAddr = "" }, "--clickhouse-addr"},
		{func(c *Config) { c.EventLog, c.KafkaBrokers = "local", nil }, "--metric-store clickhouse is shared"},
		{func(c *Config) { c.CatalogDSN = "" }, "needs --catalog-dsn"},
		{func(c *Config) { c.KafkaGroup = "" }, "--kafka-group"},
		{func(c *Config) { c.ReadyMaxLag = -1 }, "--ready-max-lag"},
	} {
		c := base()
		tc.change(&c)
		err := c.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", c.Roles, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("got %v, want an error saying %q", err, tc.want)
		}
		if err == nil && !c.SharedProcessing() {
			t.Errorf("a valid ClickHouse configuration must share processing")
		}
	}
}
