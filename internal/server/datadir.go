package server

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// dataDir owns the layout of --data-dir: every path of embedded state is named here, and
// nothing else in the process builds one.
//
//	LOCK        held (flock) while a process uses the dir: embedded state belongs to one process
//	PID         the process id of the holder, for operators (kill -USR2 to restart in place)
//	secrets/    generated admin key and click secret, 0600
//	log/        the local event log (--event-log local)
//	catalog.db  the SQLite catalog (no --catalog-dsn)
//	metrics/    the Pebble metric store
//	billing/    the ledger, spend and user views (Pebble)
//	archive/    the raw archive, Parquet (default --archive-url)
//	reconcile/  the hourly reconciliation's progress
//	ivt/        the behavioural invalid-traffic stage: verdicts, credits, offsets (Pebble)
//	attribution/ touches and conversion decisions (Pebble)
//	snapshots/  in-memory state written with the log offsets it reflects, so a start reads
//	            only the log after them (dedup); deleting them is safe (rebuilt from the log)
type dataDir struct {
	root string
	lock *os.File
}

func (d dataDir) secrets() string     { return filepath.Join(d.root, "secrets") }
func (d dataDir) log() string         { return filepath.Join(d.root, "log") }
func (d dataDir) catalogDB() string   { return filepath.Join(d.root, "catalog.db") }
func (d dataDir) metrics() string     { return filepath.Join(d.root, "metrics") }
func (d dataDir) billing() string     { return filepath.Join(d.root, "billing") }
func (d dataDir) archive() string     { return filepath.Join(d.root, "archive") }
func (d dataDir) reconcile() string   { return filepath.Join(d.root, "reconcile") }
func (d dataDir) attribution() string { return filepath.Join(d.root, "attribution") }
func (d dataDir) ivt() string         { return filepath.Join(d.root, "ivt") }
func (d dataDir) snapshots() string   { return filepath.Join(d.root, "snapshots") }
func (d dataDir) catalogSnapshot() string {
	return filepath.Join(d.snapshots(), "catalog")
}
func (d dataDir) dedupSnapshot() string {
	return filepath.Join(d.snapshots(), "dedup")
}

// openDataDir creates the dir if needed and takes its lock, so a second process on the same
// embedded state fails at once with a clear error instead of corrupting it or failing deep
// inside an engine.
//
// wait > 0 waits that long for the lock: a process started by Handoff takes over the dir as
// soon as its predecessor releases it.
func openDataDir(root string, wait time.Duration) (*dataDir, error) {
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(root, "LOCK"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data dir lock: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil || !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data dir %s is in use by another adpulse process: embedded state (event log, dedup keys, metric store, ledger) belongs to one process; give each process its own --data-dir, and share work through the scale-out backends", root)
		}
		return nil, fmt.Errorf("data dir lock: %w", err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()) + "\n")
	if err := os.WriteFile(filepath.Join(root, "PID"), pid, 0o644); err != nil {
		f.Close()
		return nil, fmt.Errorf("data dir: write PID: %w", err)
	}
	return &dataDir{root: root, lock: f}, nil
}

// close releases the lock.
func (d *dataDir) close() error {
	if d == nil || d.lock == nil {
		return nil
	}
	return d.lock.Close() // closing the descriptor releases the flock
}

// loadSecret returns the secret stored at path, or generates one, stores it durably (0600,
// written to a temporary file, synced, renamed, directory synced) and reports created.
func loadSecret(path string, generate func() string) (value string, created bool, err error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return string(trimNewline(b)), false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("read %s: %w", path, err)
	}
	value = generate()
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("create %s: %w", tmp, err)
	}
	_, err = f.WriteString(value + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return "", false, fmt.Errorf("write %s: %w", path, err)
	}
	return value, true, syncDir(filepath.Dir(path))
}

// newAdminKey returns a random admin key (256 bits) with a recognisable prefix.
func newAdminKey() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (Go 1.24+)
	return "adp_admin_" + base64.RawURLEncoding.EncodeToString(b[:])
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func mkdirPrivate(dir string) error { return os.MkdirAll(dir, 0o700) }
