package cron

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Lock keeps a deployment's jobs one at a time: a run takes it, or is skipped when another
// process holds it.
type Lock interface {
	// TryLock takes the lock if it is free. lost is closed if the lock is lost while held
	// (the database connection holding it broke), and the run is then stopped. release
	// gives it back.
	TryLock(ctx context.Context) (release func(), lost <-chan struct{}, ok bool, err error)
}

// FileLock is the embedded lock: flock(2) on a file, for cron processes on one machine.
type FileLock struct{ Path string }

// TryLock implements Lock.
func (l FileLock) TryLock(context.Context) (func(), <-chan struct{}, bool, error) {
	if err := os.MkdirAll(filepath.Dir(l.Path), 0o755); err != nil {
		return nil, nil, false, err
	}
	f, err := os.OpenFile(l.Path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, nil, false, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil, false, nil
		}
		return nil, nil, false, err
	}
	// The kernel drops the lock with the file, also when the process dies.
	return func() { f.Close() }, make(chan struct{}), true, nil
}

// SQLLock is the deployment-wide lock in the shared catalog database: a PostgreSQL
// session-level advisory lock or a MySQL named lock (GET_LOCK). Both belong to one
// connection and vanish with it, so a cron process that dies frees the lock; the connection
// is pinged while the lock is held, and a failed ping reports the lock lost.
type SQLLock struct {
	DB       *sql.DB
	Postgres bool   // false: MySQL/MariaDB
	Name     string // lock name (default "adpulse-cron")
	// PingEvery is how often the holding connection is checked (default 5 s).
	PingEvery time.Duration
}

// TryLock implements Lock.
func (l SQLLock) TryLock(ctx context.Context) (func(), <-chan struct{}, bool, error) {
	name := l.Name
	if name == "" {
		name = "adpulse-cron"
	}
	every := l.PingEvery
	if every <= 0 {
		every = 5 * time.Second
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := l.DB.Conn(cctx)
	if err != nil {
		return nil, nil, false, fmt.Errorf("cron lock: %w", err)
	}
	var got sql.NullInt64
	var unlock string
	var arg any
	if l.Postgres {
		key := advisoryKey(name)
		var ok bool
		err = conn.QueryRowContext(cctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&ok)
		if ok {
			got.Int64, got.Valid = 1, true
		}
		unlock, arg = "SELECT pg_advisory_unlock($1)", key
	} else {
		err = conn.QueryRowContext(cctx, "SELECT GET_LOCK(?, 0)", name).Scan(&got)
		unlock, arg = "SELECT RELEASE_LOCK(?)", name
	}
	if err != nil || !got.Valid || got.Int64 != 1 {
		conn.Close()
		if err != nil {
			return nil, nil, false, fmt.Errorf("cron lock: %w", err)
		}
		return nil, nil, false, nil
	}
	lost := make(chan struct{})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				pctx, cancel := context.WithTimeout(context.Background(), every)
				err := conn.PingContext(pctx)
				cancel()
				if err != nil {
					close(lost)
					return
				}
			}
		}
	}()
	release := func() {
		close(stop)
		<-done
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn.ExecContext(rctx, unlock, arg) // closing the connection frees it anyway
		// Discard the connection rather than pool it: a lock whose release failed dies with
		// its session.
		conn.Raw(func(any) error { return driver.ErrBadConn })
		conn.Close()
	}
	return release, lost, true, nil
}

// advisoryKey is the PostgreSQL advisory lock key of a lock name.
func advisoryKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return int64(h.Sum64())
}
