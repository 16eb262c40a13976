// Package pebbleutil holds what every Pebble database of adpulse (the metric store, the
// billing ledger, the attribution and invalid-traffic stages) opens with: a directory whose
// entry survives a crash, and Pebble's log lines routed to slog.
package pebbleutil

import (
	"fmt"
	"log/slog"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"
)

// CreateDir creates dir and syncs its parent, so that a crash right after the first commit
// cannot lose the directory entry, and with it every commit synced inside (Pebble syncs what
// is inside its directory, not the parent). what names the database in errors.
func CreateDir(fs vfs.FS, dir, what string) error {
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s dir: %w", what, err)
	}
	parent := fs.PathDir(dir)
	if parent == "" {
		parent = "."
	}
	d, err := fs.OpenDir(parent)
	if err != nil {
		return fmt.Errorf("open parent of %s dir: %w", what, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync parent of %s dir: %w", what, err)
	}
	return nil
}

// Logger routes Pebble's log lines to l, tagged with component: its routine lines at debug
// level, corruption at error level.
func Logger(l *slog.Logger, component string) pebble.Logger {
	return logger{l, component}
}

type logger struct {
	l         *slog.Logger
	component string
}

func (l logger) Infof(format string, args ...any) {
	l.l.Debug(fmt.Sprintf(format, args...), "component", l.component)
}

func (l logger) Errorf(format string, args ...any) {
	l.l.Error(fmt.Sprintf(format, args...), "component", l.component)
}

// Fatalf is what Pebble calls on unrecoverable corruption; it must not return.
func (l logger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.l.Error(msg, "component", l.component)
	panic("pebble: " + msg)
}
