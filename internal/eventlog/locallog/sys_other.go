//go:build !linux

package locallog

import "os"

// fdatasync falls back to a full sync where fdatasync is not available.
func fdatasync(f *os.File) error { return f.Sync() }

// lockFile does not lock outside Linux: the directory lock is a guard against operator error,
// not part of the durability argument.
func lockFile(*os.File) error { return nil }
