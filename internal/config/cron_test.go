package config

import (
	"strings"
	"testing"
)

func TestCronRole(t *testing.T) {
	c := Default()
	c.Roles = []string{RoleCron}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--cron-config") {
		t.Fatalf("cron without a config: %v", err)
	}
	c.CronConfig = "jobs.yaml"
	if err := c.Validate(); err != nil {
		t.Fatalf("cron alone needs no shared backends: %v", err)
	}
	c.Roles = []string{RoleIngest, RoleProcess, RoleQuery, RoleCron}
	if err := c.Validate(); err != nil {
		t.Fatalf("embedded with cron: %v", err)
	}
	c.Roles = []string{RoleIngest, RoleCron}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "kafka") {
		t.Fatalf("a split ingest node still needs the shared backends: %v", err)
	}
	def := Default()
	if !c.Has(RoleCron) || def.Has(RoleCron) {
		t.Fatal("cron must be asked for by name")
	}
}
