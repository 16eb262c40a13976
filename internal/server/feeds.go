package server

import (
	"context"
	"fmt"
	"net/http"

	"github.com/adpulse/adpulse/internal/archive"
	"github.com/adpulse/adpulse/internal/config"
	"github.com/adpulse/adpulse/internal/feeds"
)

// feedsRole is the data-science feeds of this process: the versions in the catalog database
// (every process: the endpoints answer everywhere), the auto_cpc bids in memory (processes
// that take clicks), and the loader of --feeds-url (process nodes; with several, the version's
// primary key lets exactly one of them load each version).
type feedsRole struct {
	store  *feeds.Store
	bids   *feeds.Bids   // nil without the ingest role
	loader *feeds.Loader // nil unless --feeds-url is set on a process node
}

func (a *App) openFeeds(ctx context.Context) error {
	db, d := a.b.catalog.DB()
	store, err := feeds.OpenStore(ctx, db, d, a.now)
	if err != nil {
		return err
	}
	f := &feedsRole{store: store}
	a.feeds = f
	log := a.logger.With("component", "feeds")
	if a.cfg.Has(config.RoleIngest) {
		if f.bids, err = feeds.NewBids(store, 0, a.reg, log); err != nil {
			return err
		}
		// Loaded before the first click is taken, so a restart prices clicks as before it.
		if err := f.bids.Refresh(ctx); err != nil {
			return fmt.Errorf("read the active auto_cpc feed: %w", err)
		}
		a.components.Go("feeds: active versions", f.bids.Run)
	}
	if a.cfg.FeedsURL == "off" || a.cfg.FeedsURL == "" || !a.cfg.Has(config.RoleProcess) {
		return nil
	}
	loc, err := archive.OpenTarget(a.cfg.FeedsURL, archive.S3Options{
		Endpoint: a.cfg.FeedsS3Endpoint, Region: a.cfg.FeedsS3Region,
		AccessKey: a.cfg.FeedsS3AccessKey, SecretKey: a.cfg.FeedsS3SecretKey,
		Insecure: a.cfg.FeedsS3Insecure, PathStyle: a.cfg.FeedsS3PathStyle,
	})
	if err != nil {
		return fmt.Errorf("--feeds-url: %w", err)
	}
	cat := a.b.catalog
	f.loader, err = feeds.NewLoader(feeds.Options{
		Location: loc,
		Store:    store,
		CampaignExists: func(id string) bool {
			_, ok := cat.Campaign(id)
			return ok
		},
		Interval:   a.cfg.FeedsInterval,
		Keep:       a.cfg.FeedsKeep,
		MaxRows:    a.cfg.FeedsMaxRows,
		Timeout:    max(10*a.cfg.BackendTimeout, a.cfg.FeedsInterval),
		Registerer: a.reg,
		Logger:     log,
	})
	if err != nil {
		return err
	}
	a.logger.Info("loading data-science feeds", "from", loc.String(), "interval", a.cfg.FeedsInterval)
	a.components.Go("feeds loader", f.loader.Run)
	return nil
}

func (a *App) registerFeeds(mux *http.ServeMux) {
	feeds.NewHandler(a.feeds.store, a.b.catalog.CampaignOwner, a.logger.With("component", "feeds")).Register(mux)
}
