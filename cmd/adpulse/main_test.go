package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/adpulse/adpulse/internal/config"
)

func TestFlagsFromEnvironment(t *testing.T) {
	t.Setenv("ADPULSE_CLICK_SECRET", "from-env-secret-0123456789")
	t.Setenv("ADPULSE_LISTEN", ":9999")
	t.Setenv("ADPULSE_CLICK_TTL", "30m")
	cfg := config.Default()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	serveFlags(fs, &cfg)
	if err := parseFlags(fs, []string{"--listen", ":7777"}); err != nil {
		t.Fatal(err)
	}
	if cfg.ClickSecret != "from-env-secret-0123456789" || cfg.ClickTTL != 30*time.Minute {
		t.Fatalf("environment not applied: %+v", cfg)
	}
	if cfg.Listen != ":7777" {
		t.Fatalf("a flag on the command line must win over the environment, got %q", cfg.Listen)
	}
	if cfg.DataDir != "./adpulse-data" || cfg.OpsListen != "127.0.0.1:9464" {
		t.Fatalf("defaults of the API contract changed: %+v", cfg)
	}
}

func TestBadEnvironmentValue(t *testing.T) {
	t.Setenv("ADPULSE_CLICK_TTL", "soon")
	cfg := config.Default()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	serveFlags(fs, &cfg)
	err := parseFlags(fs, nil)
	if err == nil || !strings.Contains(err.Error(), "ADPULSE_CLICK_TTL") {
		t.Fatalf("want an error naming ADPULSE_CLICK_TTL, got %v", err)
	}
	if !strings.Contains(err.Error(), `"soon"`) || !strings.Contains(err.Error(), "want a duration") {
		t.Errorf("want the value and the expected form in %q", err)
	}
}

func TestHelpAndUnknown(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"help"}, &out, &errOut); code != 0 {
		t.Fatalf("help exit %d", code)
	}
	for _, sub := range []string{"serve", "sign", "version", "help"} {
		if !strings.Contains(out.String(), sub) {
			t.Errorf("help does not list %s", sub)
		}
	}
	if code := run([]string{"frobnicate"}, &out, &errOut); code != 2 {
		t.Fatalf("unknown subcommand exit %d, want 2", code)
	}
}

func TestSign(t *testing.T) {
	const secret = "k1:0123456789abcdef0123456789abcdef"
	var out, errOut bytes.Buffer
	code := run([]string{"sign", "--click-secret", secret, "--ad-id", "ad1", "--impression-id", "imp1", "--public-url", "https://t.example/"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var tok string
	for _, line := range strings.Split(out.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "click_url=https://t.example/c/"); ok {
			tok = v
		}
	}
	kr, _ := clicktoken.ParseKeyring(secret)
	c, err := kr.Verify(tok)
	if err != nil || c.AdID != "ad1" || c.ImpressionID != "imp1" {
		t.Fatalf("printed %q: %+v %v", out.String(), c, err)
	}
	if code := run([]string{"sign", "--click-secret", secret}, &out, &errOut); code == 0 {
		t.Fatal("sign without --ad-id must fail")
	}
}

// TestTrustedProxiesFlag: CIDRs and bare addresses (one host) are accepted, anything else is
// an error naming the value.
func TestTrustedProxiesFlag(t *testing.T) {
	cfg := config.Default()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	serveFlags(fs, &cfg)
	if err := parseFlags(fs, []string{"--trusted-proxies", "10.0.0.0/8, 127.0.0.1,::1,2001:db8::/32,"}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range cfg.TrustedProxies {
		got = append(got, p.String())
	}
	if strings.Join(got, " ") != "10.0.0.0/8 127.0.0.1/32 ::1/128 2001:db8::/32" {
		t.Fatalf("trusted proxies %v", got)
	}
	fs = flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	serveFlags(fs, &cfg)
	if err := parseFlags(fs, []string{"--trusted-proxies", "10.0.0.0/8,proxy.internal"}); err == nil || !strings.Contains(err.Error(), "proxy.internal") {
		t.Fatalf("want an error naming proxy.internal, got %v", err)
	}
}

// Mistakes in how adpulse is called are usage errors (exit 2) that name the value and the
// expected form, and write nothing to the data dir.
func TestUsageErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--partitions", "many"}, `invalid value "many" for flag -partitions`},
		{[]string{"serve", "--no-such-flag"}, "not defined: -no-such-flag"},
		{[]string{"serve", "--data-dir", dir, "--catalog-dsn", "root@tcp(127.0.0.1:3306)/test"}, "mysql://user:password@tcp(host:3306)/dbname"},
		{[]string{"serve", "--data-dir", dir, "--catalog-dsn", "postgres:/db"}, "want postgres://"},
		{[]string{"serve", "--data-dir", dir, "--public-url", "ftp://t.example"}, "--public-url \"ftp://t.example\" must be an absolute http(s) URL"},
		{[]string{"serve", "--data-dir", dir, "--roles", "ingest"}, "needs --event-log kafka"},
		{[]string{"serve", "--data-dir", dir, "--catalog-dsn", "mysql://root@127.0.0.1/x"}, "must look like mysql://user:password@tcp(host:3306)/dbname"},
		{[]string{"serve", "--data-dir", dir, "--listen", "bogus"}, `--listen "bogus" must be host:port or :port`},
		{[]string{"serve", "--data-dir", dir, "--ops-listen", "127.0.0.1"}, `--ops-listen "127.0.0.1" must be host:port`},
		{[]string{"serve", "--data-dir", dir, "--log-format", "json", "--listen", "bogus"}, `{"time":`},
		{[]string{"serve", "--data-dir", dir, "--memory-limit", "4 gigs"}, `--memory-limit "4 gigs": want a size such as 4GiB`},
		{[]string{"serve", "--data-dir", dir, "--memory-limit", "150%"}, `--memory-limit "150%": a share of memory is more than 0% and at most 100%`},
	} {
		var out, errOut bytes.Buffer
		if code := run(tc.args, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut.String(), tc.want)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("a refused configuration left %s behind (%v)", dir, err)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"--version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "adpulse ") {
		t.Errorf("--version: exit %d, %q", code, out.String())
	}
	out.Reset()
	errOut.Reset()
	if code := run([]string{"serve", "-h"}, &out, &errOut); code != 0 || !strings.Contains(errOut.String(), "[env ADPULSE_CLICK_SECRET]") {
		t.Errorf("serve -h: exit %d, does not name each flag's variable:\n%s", code, errOut.String())
	}
}
