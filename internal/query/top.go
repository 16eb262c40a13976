package query

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/adpulse/adpulse/internal/httpapi"
	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/query/topn"
)

func (h *Handler) serveTop(w http.ResponseWriter, r *http.Request) {
	p, err := httpapi.RequireReader(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	tp, err := parseTopParams(r.URL.Query(), h.opts.Now())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if p.Role != httpapi.RoleAdmin {
		if tp.advertiser != "" && tp.advertiser != p.AdvertiserID {
			h.fail(w, r, notFound("advertiser_id", "advertiser", tp.advertiser))
			return
		}
		if tp.campaign != "" && !h.owns(p.AdvertiserID, metricstore.LevelCampaign, tp.campaign) {
			h.fail(w, r, notFound("campaign_id", "campaign", tp.campaign))
			return
		}
		tp.advertiser = p.AdvertiserID // an advertiser key only ever ranks its own objects
	}
	if h.opts.Index == nil {
		h.fail(w, r, httpapi.Errorf(httpapi.CodeUnavailable, "top-N index: not configured"))
		return
	}
	h.catchUp(r)
	ctx, cancel := context.WithTimeout(r.Context(), h.opts.StoreTimeout)
	items, err := h.opts.Index.Top(ctx, topn.Query{
		Level: tp.level, Metric: tp.metric, From: tp.from, To: tp.to, N: tp.n,
		Advertiser: tp.advertiser, Campaign: tp.campaign,
	})
	cancel()
	if err != nil {
		h.fail(w, r, topError(err))
		return
	}
	b := make([]byte, 0, 128+len(items)*48)
	b = append(b, `{"start_time":`...)
	b = appendTime(b, time.Unix(tp.from*60, 0))
	b = append(b, `,"end_time":`...)
	b = appendTime(b, time.Unix(tp.to*60, 0))
	b = append(b, `,"metric":"`...)
	b = append(b, tp.metric.String()...)
	b = append(b, `","by":"`...)
	b = append(b, tp.level.String()...)
	b = append(b, `","items":[`...)
	key, metric := seriesKey(tp.level), tp.metric.String()
	for i, it := range items {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"`...)
		b = append(b, key...)
		b = append(b, `":`...)
		b = appendString(b, it.ID)
		b = append(b, `,"`...)
		b = append(b, metric...)
		b = append(b, `":`...)
		b = strconv.AppendInt(b, it.Value, 10)
		b = append(b, '}')
	}
	b = append(b, "]}\n"...)
	// At most topn.MaxN items, tens of KB: one deadline for all of it.
	httpapi.SetWriteTimeout(w, h.opts.WriteIdle)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
	h.topOK.Add(1)
}

// topError maps an index error to the API.
func topError(err error) error {
	switch {
	case errors.Is(err, topn.ErrOutOfRange):
		return httpapi.BadField("start_time", "before the oldest minute the top-N index holds (it keeps the last 24 hours; after a restart, what was rebuilt)")
	case errors.Is(err, topn.ErrInvalidQuery):
		return httpapi.BadField("minutes", trimPrefix(err))
	case errors.Is(err, context.DeadlineExceeded):
		return httpapi.Errorf(httpapi.CodeUnavailable, "top-N index: no answer in time, retry")
	}
	return fmt.Errorf("top-N query: %w", err)
}
