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
	} {
		c := Default()
		tc.mut(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("want an error naming %s, got %v", tc.flag, err)
		}
	}
}
