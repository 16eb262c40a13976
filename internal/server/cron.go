package server

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"

	"github.com/adpulse/adpulse/internal/catalog"
	"github.com/adpulse/adpulse/internal/cron"
)

// openCron starts the cron role: the jobs of --cron-config, one at a time across the
// deployment. The lock is an advisory lock in the shared catalog database when there is one
// (every cron process of a deployment shares it), a file lock in the data dir otherwise.
func (a *App) openCron() error {
	cfg, err := cron.LoadConfig(a.cfg.CronConfig)
	if err != nil {
		return fmt.Errorf("--cron-config: %w", err)
	}
	var lock cron.Lock = cron.FileLock{Path: filepath.Join(a.dir.root, "cron.lock")}
	var lockDB *sql.DB
	if a.cfg.CatalogDSN != "" {
		d, driver, dsn, err := catalog.ParseDSN(a.cfg.CatalogDSN)
		if err != nil {
			return err
		}
		if d == catalog.DialectPostgres || d == catalog.DialectMySQL {
			db, err := sql.Open(driver, dsn)
			if err != nil {
				return fmt.Errorf("cron lock database: %w", err)
			}
			lockDB = db
			lock = cron.SQLLock{DB: db, Postgres: d == catalog.DialectPostgres}
		}
	}
	s, err := cron.New(cron.Options{Config: cfg, Lock: lock, Now: a.now, Logger: a.logger.With("component", "cron"), Registerer: a.reg})
	if err != nil {
		if lockDB != nil {
			lockDB.Close()
		}
		return err
	}
	a.components.Go("cron", func(ctx context.Context) error {
		if lockDB != nil {
			defer lockDB.Close()
		}
		return s.Run(ctx)
	})
	return nil
}
