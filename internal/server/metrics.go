package server

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// statsCollector turns the engines' plain Stats structs into Prometheus metrics at scrape
// time, so the engines stay free of a metrics dependency and nothing is counted twice.
type statsCollector struct {
	a     *App
	descs map[string]*prometheus.Desc
}

type metricDef struct {
	name, help string
	typ        prometheus.ValueType
	labels     []string
}

var collectorDefs = []metricDef{
	{"adpulse_eventlog_appended_messages_total", "Messages made durable in the event log.", prometheus.CounterValue, nil},
	{"adpulse_eventlog_appended_bytes_total", "Value bytes made durable in the event log.", prometheus.CounterValue, nil},
	{"adpulse_eventlog_commits_total", "Group commits of the event log.", prometheus.CounterValue, nil},
	{"adpulse_eventlog_syncs_total", "fdatasync calls on event log segments.", prometheus.CounterValue, nil},
	{"adpulse_eventlog_sync_seconds_total", "Time spent in fdatasync on event log segments.", prometheus.CounterValue, nil},
	{"adpulse_eventlog_segments_deleted_total", "Segments deleted by retention.", prometheus.CounterValue, nil},
	{"adpulse_eventlog_end_offset", "Next offset to be assigned, per partition.", prometheus.GaugeValue, []string{"partition"}},
	{"adpulse_eventlog_start_offset", "First retained offset, per partition.", prometheus.GaugeValue, []string{"partition"}},
	{"adpulse_eventlog_bytes", "Durable bytes on disk, per partition.", prometheus.GaugeValue, []string{"partition"}},
	{"adpulse_ingest_events_accepted_total", "Events appended to the log.", prometheus.CounterValue, nil},
	{"adpulse_ingest_events_duplicate_total", "Events dropped as duplicates of a recorded idempotency key.", prometheus.CounterValue, nil},
	{"adpulse_ingest_record_failures_total", "Requests whose events could not be made durable (nothing acknowledged).", prometheus.CounterValue, nil},
	{"adpulse_dedup_keys", "Idempotency keys held by the embedded dedup store.", prometheus.GaugeValue, nil},
	{"adpulse_catalog_objects", "Catalog objects by kind.", prometheus.GaugeValue, []string{"kind"}},
}

func newStatsCollector(a *App) *statsCollector {
	c := &statsCollector{a: a, descs: make(map[string]*prometheus.Desc)}
	for _, d := range collectorDefs {
		c.descs[d.name] = prometheus.NewDesc(d.name, d.help, d.labels, nil)
	}
	return c
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	typ := make(map[string]prometheus.ValueType, len(collectorDefs))
	for _, d := range collectorDefs {
		typ[d.name] = d.typ
	}
	emit := func(name string, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(c.descs[name], typ[name], v, labels...)
	}
	ls := c.a.log.Stats()
	emit("adpulse_eventlog_appended_messages_total", float64(ls.AppendedMessages))
	emit("adpulse_eventlog_appended_bytes_total", float64(ls.AppendedBytes))
	emit("adpulse_eventlog_commits_total", float64(ls.Commits))
	emit("adpulse_eventlog_syncs_total", float64(ls.Syncs))
	emit("adpulse_eventlog_sync_seconds_total", ls.SyncTime.Seconds())
	emit("adpulse_eventlog_segments_deleted_total", float64(ls.SegmentsDeleted))
	for p, ps := range ls.Partitions {
		part := strconv.Itoa(p)
		emit("adpulse_eventlog_end_offset", float64(ps.End), part)
		emit("adpulse_eventlog_start_offset", float64(ps.Start), part)
		emit("adpulse_eventlog_bytes", float64(ps.Bytes), part)
	}
	is := c.a.intake.Stats()
	emit("adpulse_ingest_events_accepted_total", float64(is.Accepted))
	emit("adpulse_ingest_events_duplicate_total", float64(is.Duplicates))
	emit("adpulse_ingest_record_failures_total", float64(is.Failures))
	emit("adpulse_dedup_keys", float64(c.a.keys.Len()))
	cs := c.a.catalog.Stats()
	emit("adpulse_catalog_objects", float64(cs.Advertisers), "advertiser")
	emit("adpulse_catalog_objects", float64(cs.Campaigns), "campaign")
	emit("adpulse_catalog_objects", float64(cs.Ads), "ad")
}
