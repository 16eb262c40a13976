package bulkimport

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/adpulse/adpulse/client"
	"github.com/adpulse/adpulse/internal/cliflag"
	"github.com/adpulse/adpulse/internal/progress"
)

// ErrRowsRejected is returned by Command when the import finished but some rows were
// rejected (exit status 1, so a scheduler notices).
var ErrRowsRejected = errors.New("rows rejected")

// S3Flags adds the flags of an s3:// source or destination to fs.
func S3Flags(fs *flag.FlagSet, o *S3Options) {
	fs.StringVar(&o.Endpoint, "s3-endpoint", "", "S3 API host[:port] (default s3.amazonaws.com)")
	fs.StringVar(&o.Region, "s3-region", "", "S3 region")
	fs.StringVar(&o.AccessKey, "s3-access-key", "", "S3 access key (default: AWS_ACCESS_KEY_ID, ~/.aws/credentials or the instance role)")
	fs.StringVar(&o.SecretKey, "s3-secret-key", "", "S3 secret key")
	fs.BoolVar(&o.Insecure, "s3-insecure", false, "plain http to --s3-endpoint (a local MinIO)")
	fs.BoolVar(&o.PathStyle, "s3-path-style", false, "path-style bucket addressing (MinIO and most S3-compatible stores)")
}

// Command is `adpulse import`: it parses args (each flag also read from its ADPULSE_*
// variable through lookupEnv), imports and prints a summary to stdout; progress and rejected
// rows go to stderr.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) error {
	fs := flag.NewFlagSet("import", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: adpulse import --source FILE|s3://bucket/key|postgres://...|mysql://...|trino://... [--query SQL] [flags]\n\n"+
			"Sends every row to POST /events of a running adpulse (the same validation and idempotency\n"+
			"as any client), resumable from --checkpoint. Columns: "+strings.Join(Columns, ", ")+".\n\nFlags:\n")
		fs.PrintDefaults()
	}
	var (
		o                        Options
		s3                       S3Options
		source, query, format    string
		target, key, dataDir, cp string
		timeout                  time.Duration
		showProgress             string
	)
	fs.StringVar(&source, "source", "", "a file (.ndjson, .jsonl, .csv, .parquet), s3://bucket/key, or a database: postgres://..., mysql://user:pass@tcp(host:3306)/db, trino://user@host:8080?catalog=c&schema=s")
	fs.StringVar(&query, "query", "", "SQL whose columns are named like the event fields (required for a database; ORDER BY a unique key so that a resumed import sees the same rows in the same order)")
	fs.StringVar(&format, "format", "", "ndjson, csv or parquet (default: from the file name)")
	fs.StringVar(&target, "target", "http://localhost:8080", "base URL of the adpulse API")
	fs.StringVar(&key, "key", "", "an ingest or admin API key (default: the admin key stored in --data-dir)")
	fs.StringVar(&dataDir, "data-dir", "", "data dir of a local adpulse server, to read the admin key from")
	fs.StringVar(&cp, "checkpoint", "", "checkpoint file (default adpulse-import-HASH.checkpoint in the current directory, HASH from --source and --query; 'none': no checkpoint)")
	fs.BoolVar(&o.DryRun, "dry-run", false, "read and validate every row, count, send nothing")
	fs.IntVar(&o.BatchSize, "batch", 5000, "rows per POST /events")
	fs.IntVar(&o.Parallel, "parallel", 4, "requests in flight")
	fs.IntVar(&o.MaxErrors, "max-errors", 100, "rejected rows listed on stderr (all are counted)")
	fs.DurationVar(&timeout, "timeout", 30*time.Second, "timeout of one attempt of a request")
	attempts := fs.Int("attempts", 8, "attempts of one batch (with backoff) before the import stops; resume it from the checkpoint")
	fs.StringVar(&showProgress, "progress", "auto", "auto (a bar on a terminal, lines otherwise), bar, lines, off")
	S3Flags(fs, &s3)
	if err := cliflag.Parse(fs, args, lookupEnv); err != nil {
		return err
	}
	if source == "" {
		return errors.New("--source is required")
	}
	if o.BatchSize < 1 || o.BatchSize > 100_000 {
		return errors.New("--batch must be 1 to 100000")
	}
	if o.Parallel < 1 || o.Parallel > 64 {
		return errors.New("--parallel must be 1 to 64")
	}
	o.Fingerprint = source + "\x00" + query
	switch cp {
	case "none":
		cp = ""
	case "":
		h := sha256.Sum256([]byte(o.Fingerprint))
		cp = "adpulse-import-" + hex.EncodeToString(h[:6]) + ".checkpoint"
	}
	o.Checkpoint = cp
	// The fingerprint is stored in the checkpoint file: keep passwords out of it.
	o.Fingerprint = redactSecrets(source) + "\x00" + query
	if !o.DryRun {
		if key == "" && dataDir != "" {
			b, err := os.ReadFile(filepath.Join(dataDir, "secrets", "admin-key"))
			if err != nil {
				return fmt.Errorf("no --key and none in --data-dir: %w", err)
			}
			key = strings.TrimSpace(string(b))
		}
		if key == "" {
			return errors.New("--key (ADPULSE_KEY) or --data-dir is required (or --dry-run)")
		}
		c, err := client.New(client.Config{BaseURL: target, Key: key, AttemptTimeout: timeout, MaxAttempts: *attempts})
		if err != nil {
			return err
		}
		o.Client = c
	}
	src, err := Open(ctx, source, query, Format(format), s3)
	if err != nil {
		return err
	}
	defer src.Close()
	o.Source = src
	if _, isSQL := src.(*sqlSource); isSQL && o.Checkpoint != "" && !strings.Contains(strings.ToLower(query), "order by") {
		fmt.Fprintln(stderr, "import: warning: --query has no ORDER BY; resuming from the checkpoint needs the rows in the same order every time")
	}
	o.Errors = stderr
	o.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	var term *bool
	switch showProgress {
	case "auto":
	case "bar", "lines":
		v := showProgress == "bar"
		term = &v
	case "off":
	default:
		return errors.New("--progress: want auto, bar, lines or off")
	}
	if showProgress != "off" {
		o.Progress = progress.New(stderr, progress.Options{Label: "import", Terminal: term})
		_, total := src.Progress()
		o.Progress.SetTotal(total)
	}
	sum, err := Run(ctx, o)
	if o.Progress != nil {
		o.Progress.Close()
	}
	if o.DryRun {
		fmt.Fprintf(stdout, "dry run: %d rows read, %d valid, %d rejected in %s (%.0f rows/s)\n",
			sum.Rows, sum.Valid, sum.Rejected, sum.Elapsed.Round(time.Millisecond), sum.RowsPerSecond())
	} else {
		fmt.Fprintf(stdout, "imported %d rows (%d done before, from %s): %d accepted, %d duplicates, %d rejected in %s (%.0f rows/s)\n",
			sum.Rows, sum.Resumed, o.Checkpoint, sum.Accepted, sum.Duplicates, sum.Rejected, sum.Elapsed.Round(time.Millisecond), sum.RowsPerSecond())
	}
	if err != nil {
		return err
	}
	if sum.Rejected > 0 {
		return fmt.Errorf("%d %w (listed on stderr with their row and field)", sum.Rejected, ErrRowsRejected)
	}
	return nil
}

// redactSecrets hides a password in a source URL.
func redactSecrets(s string) string {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return s
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return s
	}
	user, _, _ := strings.Cut(rest[:at], ":")
	return scheme + "://" + user + "@" + rest[at+1:]
}
