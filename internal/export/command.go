package export

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

	"github.com/adpulse/adpulse/client"
	"github.com/adpulse/adpulse/internal/cliflag"
	"github.com/adpulse/adpulse/internal/progress"
)

// Command is `adpulse export`: it parses args (each flag also read from its ADPULSE_*
// variable through lookupEnv), writes the export to --out (or stdout) and a summary and
// progress to stderr.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) error {
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: adpulse export --from T --to T --by ad|campaign|advertiser --interval 1m|1h|1d --format csv|parquet|ndjson --ids ID,ID|all [flags]\n\n"+
			"Writes the aggregates read from GET /metrics of a running adpulse: one row per id and bucket.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	var (
		o                                      Options
		from, to, ids, interval, out, key, dir string
		target, catalogDSN, showProgress       string
	)
	fs.StringVar(&from, "from", "", "start of the range, RFC 3339 or YYYY-MM-DD (UTC)")
	fs.StringVar(&to, "to", "", "end of the range (exclusive), RFC 3339 or YYYY-MM-DD (UTC)")
	fs.StringVar(&o.Level, "by", "campaign", "ad, campaign or advertiser")
	fs.StringVar(&interval, "interval", "1h", "bucket: 1m, 1h or 1d")
	fs.StringVar(&o.TZ, "tz", "", "IANA time zone of day buckets and of the times written (with --interval 1d)")
	fs.StringVar(&o.Format, "format", "csv", "csv, ndjson or parquet")
	fs.StringVar(&ids, "ids", "", "comma-separated ids, or 'all' (listed from the catalog database)")
	fs.BoolVar(&o.Zeros, "zeros", false, "also write buckets whose counters are all zero")
	fs.StringVar(&out, "out", "", "output file (default stdout; required for parquet); written to FILE.tmp and renamed when complete")
	fs.StringVar(&target, "target", "http://localhost:8080", "base URL of the adpulse API")
	fs.StringVar(&key, "key", "", "admin key, or an advertiser key for its own objects (default: the admin key stored in --data-dir)")
	fs.StringVar(&dir, "data-dir", "", "data dir of a local adpulse: its admin key, and its catalog.db for --ids all")
	fs.StringVar(&catalogDSN, "catalog-dsn", "", "catalog database for --ids all (default: catalog.db in --data-dir)")
	fs.StringVar(&showProgress, "progress", "auto", "auto (a bar on a terminal, lines otherwise), off")
	if err := cliflag.Parse(fs, args, lookupEnv); err != nil {
		return err
	}
	var err error
	if o.From, err = parseTime("--from", from); err != nil {
		return err
	}
	if o.To, err = parseTime("--to", to); err != nil {
		return err
	}
	switch interval {
	case "1m":
		o.Interval = time.Minute
	case "1h":
		o.Interval = time.Hour
	case "1d":
		o.Interval = 24 * time.Hour
	default:
		return errors.New("--interval: want 1m, 1h or 1d")
	}
	if o.Format == "parquet" && out == "" {
		return errors.New("--out is required for parquet")
	}
	if key == "" && dir != "" {
		b, err := os.ReadFile(filepath.Join(dir, "secrets", "admin-key"))
		if err != nil {
			return fmt.Errorf("no --key and none in --data-dir: %w", err)
		}
		key = strings.TrimSpace(string(b))
	}
	switch ids {
	case "":
		return errors.New("--ids is required (ids, or all)")
	case "all":
		if catalogDSN == "" {
			if dir == "" {
				return errors.New("--ids all needs --catalog-dsn or --data-dir to list the ids")
			}
			catalogDSN = "sqlite:" + filepath.Join(dir, "catalog.db")
		}
		if o.IDs, err = ListIDs(ctx, catalogDSN, o.Level); err != nil {
			return err
		}
		if len(o.IDs) == 0 {
			fmt.Fprintf(stderr, "export: the catalog has no %s ids\n", o.Level)
			return nil
		}
	default:
		for _, id := range strings.Split(ids, ",") {
			if id = strings.TrimSpace(id); id != "" {
				o.IDs = append(o.IDs, id)
			}
		}
	}
	if err := o.Validate(); err != nil {
		return err
	}
	c, err := client.New(client.Config{BaseURL: target, Key: key})
	if err != nil {
		return err
	}
	o.Client = c
	if showProgress != "off" {
		o.Progress = progress.New(stderr, progress.Options{Label: "export"})
	}
	w := stdout
	var f *os.File
	if out != "" {
		if f, err = os.Create(out + ".tmp"); err != nil {
			return err
		}
		defer os.Remove(out + ".tmp") // a no-op once renamed
		defer f.Close()
		w = f
	}
	t0 := time.Now()
	st, err := Run(ctx, o, w)
	if o.Progress != nil {
		o.Progress.Close()
	}
	if err != nil {
		return err
	}
	if f != nil {
		if err := f.Sync(); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		if err := os.Rename(out+".tmp", out); err != nil {
			return err
		}
	}
	fmt.Fprintf(stderr, "export: %d rows of %d %ss in %d requests, %s\n", st.Rows, st.Series, o.Level, st.Requests, time.Since(t0).Round(time.Millisecond))
	return nil
}

func parseTime(flagName, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, fmt.Errorf("%s is required", flagName)
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%s %q: want RFC 3339 (2026-12-01T00:00:00Z) or YYYY-MM-DD", flagName, s)
}
