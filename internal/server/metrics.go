package server

import (
	"strconv"
	"time"

	"github.com/adpulse/adpulse/internal/eventlog/locallog"
	"github.com/prometheus/client_golang/prometheus"
)

// statsCollector turns the engines' plain Stats structs into Prometheus metrics at scrape
// time, so the engines stay free of a metrics dependency and nothing is counted twice.
type statsCollector struct {
	a          *App
	descs      map[string]*prometheus.Desc
	appendWait *prometheus.Desc
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
	{"adpulse_eventlog_syncs_total", "fdatasync calls on event log segments and journal.", prometheus.CounterValue, nil},
	{"adpulse_eventlog_checkpoints_total", "Journal checkpoints: unsynced segments synced and the journal started afresh.", prometheus.CounterValue, nil},
	{"adpulse_eventlog_sync_seconds_total", "Time spent in fdatasync on event log segments.", prometheus.CounterValue, nil},
	{"adpulse_eventlog_segments_deleted_total", "Segments deleted by retention.", prometheus.CounterValue, nil},
	{"adpulse_eventlog_rollbacks_total", "Group commits that failed (write, fsync, disk full) and were rolled back: nothing of them acknowledged.", prometheus.CounterValue, nil},
	{"adpulse_eventlog_end_offset", "Next offset to be assigned, per partition.", prometheus.GaugeValue, []string{"partition"}},
	{"adpulse_eventlog_start_offset", "First retained offset, per partition.", prometheus.GaugeValue, []string{"partition"}},
	{"adpulse_eventlog_bytes", "Durable bytes on disk, per partition.", prometheus.GaugeValue, []string{"partition"}},
	{"adpulse_ingest_events_accepted_total", "Events appended to the log.", prometheus.CounterValue, nil},
	{"adpulse_ingest_events_duplicate_total", "Events dropped as duplicates of a recorded idempotency key.", prometheus.CounterValue, nil},
	{"adpulse_ingest_record_failures_total", "Requests whose events could not be made durable (nothing acknowledged).", prometheus.CounterValue, nil},
	{"adpulse_ingest_invalid_clicks_total", "Invalid clicks recorded (never counted as clicks, never charged), by reason.", prometheus.CounterValue, []string{"reason"}},
	{"adpulse_ingest_too_slow_total", "Requests refused because their events waited longer than the hold bound before the log.", prometheus.CounterValue, nil},
	{"adpulse_ingest_hot_ads", "Ads this ingest process salts over several partitions now.", prometheus.GaugeValue, nil},
	{"adpulse_ingest_salted_events_total", "Events of hot ads placed by their salt.", prometheus.CounterValue, nil},
	{"adpulse_ingest_hot_transitions_total", "Ads turning hot or cold on this ingest process.", prometheus.CounterValue, nil},
	{"adpulse_ingest_pinned_keys", "Keys of appends with an unknown outcome that later copies must follow to the same partition.", prometheus.GaugeValue, nil},
	{"adpulse_ingest_maybe_keys", "Idempotency keys of appends with an unknown outcome, held until the log is checked.", prometheus.GaugeValue, nil},
	{"adpulse_ingest_maybe_resolved_total", "Keys with an unknown append outcome settled from the log, by what was found.", prometheus.CounterValue, []string{"outcome"}},
	{"adpulse_dedup_keys", "Idempotency keys held: all of the window in process, or this process's reservations in flight with Redis.", prometheus.GaugeValue, nil},
	{"adpulse_dedup_snapshot_writes_total", "Snapshots of the in-process idempotency keys written (a start reads only the log after the last one).", prometheus.CounterValue, nil},
	{"adpulse_dedup_snapshot_failures_total", "Snapshots of the idempotency keys that could not be written (the previous one stays).", prometheus.CounterValue, nil},
	{"adpulse_dedup_snapshot_keys", "Keys in the last snapshot written.", prometheus.GaugeValue, nil},
	{"adpulse_dedup_snapshot_write_seconds", "How long the last snapshot of the idempotency keys took to write.", prometheus.GaugeValue, nil},
	{"adpulse_catalog_objects", "Catalog objects by kind.", prometheus.GaugeValue, []string{"kind"}},
	{"adpulse_catalog_feed_lag_seconds", "How stale this process's catalog may be: time since the change feed last brought it up to date.", prometheus.GaugeValue, nil},
	{"adpulse_catalog_feed_lag_changes", "Catalog changes in the database not yet applied here.", prometheus.GaugeValue, nil},
	{"adpulse_catalog_feed_changes_applied_total", "Catalog changes made through other processes and applied here.", prometheus.CounterValue, nil},
	{"adpulse_catalog_feed_reloads_total", "Full catalog reloads after falling behind the trimmed change feed.", prometheus.CounterValue, nil},
	{"adpulse_catalog_feed_poll_errors_total", "Failed polls of the catalog change feed.", prometheus.CounterValue, nil},
	{"adpulse_catalog_snapshot_writes_total", "Snapshots of the catalog index written to the data dir.", prometheus.CounterValue, nil},
	{"adpulse_catalog_snapshot_failures_total", "Snapshots of the catalog index that failed (the next start may load the catalog from the database).", prometheus.CounterValue, nil},

	{"adpulse_aggregate_events_consumed_total", "Log messages the aggregator processed.", prometheus.CounterValue, nil},
	{"adpulse_aggregate_events_counted_total", "Events counted into metric buckets.", prometheus.CounterValue, nil},
	{"adpulse_aggregate_duplicates_total", "Events dropped by the aggregator's duplicate filter (second line of defence).", prometheus.CounterValue, nil},
	{"adpulse_aggregate_late_after_final_total", "Events counted into a bucket already declared final.", prometheus.CounterValue, nil},
	{"adpulse_aggregate_commits_total", "Atomic commits of counts and offsets.", prometheus.CounterValue, nil},
	{"adpulse_aggregate_commit_seconds_total", "Time spent committing counts and offsets.", prometheus.CounterValue, nil},
	{"adpulse_aggregate_last_commit_seconds", "Latency of the last commit.", prometheus.GaugeValue, nil},
	{"adpulse_aggregate_lag_messages", "Messages in the log not yet consumed, per partition.", prometheus.GaugeValue, []string{"partition"}},
	{"adpulse_aggregate_watermark_delay_seconds", "How far the aggregator's watermark trails the clock.", prometheus.GaugeValue, nil},
	{"adpulse_aggregate_final_before_timestamp_seconds", "Buckets ending at or before this time are final.", prometheus.GaugeValue, nil},

	{"adpulse_metricstore_applies_total", "Metric store commits.", prometheus.CounterValue, nil},
	{"adpulse_metricstore_apply_seconds_total", "Time spent in metric store commits, sync included.", prometheus.CounterValue, nil},
	{"adpulse_metricstore_disk_bytes", "Bytes of the metric store on disk.", prometheus.GaugeValue, nil},
	{"adpulse_metricstore_block_cache_hits_total", "Blocks the embedded metric store found in its block cache.", prometheus.CounterValue, nil},
	{"adpulse_metricstore_block_cache_misses_total", "Blocks the embedded metric store read from its files (and decompressed): queries, compactions and top-N rebuild scans.", prometheus.CounterValue, nil},
	{"adpulse_metricstore_conflicts_total", "Metric store commits refused by the offset fence (another process committed the partition first).", prometheus.CounterValue, nil},
	{"adpulse_process_partitions_owned", "Log partitions this process node owns in the process group.", prometheus.GaugeValue, nil},
	{"adpulse_aggregate_fenced_total", "Partitions the aggregator resumed from the store after another process committed them.", prometheus.CounterValue, nil},

	{"adpulse_billing_events_consumed_total", "Log messages the charger processed.", prometheus.CounterValue, nil},
	{"adpulse_billing_clicks_charged_total", "Valid clicks that charged more than zero.", prometheus.CounterValue, nil},
	{"adpulse_billing_charged_micros_total", "Micros charged.", prometheus.CounterValue, nil},
	{"adpulse_billing_zero_charge_clicks_total", "Valid clicks that charged nothing, by reason.", prometheus.CounterValue, []string{"reason"}},
	{"adpulse_billing_refunded_micros_total", "Micros credited back by refunds.", prometheus.CounterValue, nil},
	{"adpulse_billing_view_duplicates_total", "Impressions already in the log within the dedup window, not counted as user views again.", prometheus.CounterValue, nil},
	{"adpulse_billing_commit_seconds_total", "Time spent committing the ledger.", prometheus.CounterValue, nil},
	{"adpulse_billing_commits_total", "Ledger transactions committed (charging rounds and refunds).", prometheus.CounterValue, nil},
	{"adpulse_billing_lag_messages", "Messages in the log not yet charged, per partition.", prometheus.GaugeValue, []string{"partition"}},
	{"adpulse_billing_journal_unapplied", "Spend journal entries not yet in the metric store.", prometheus.GaugeValue, nil},
	{"adpulse_billing_partition_claims_total", "Log partitions this node claimed in the billing ledger.", prometheus.CounterValue, nil},
	{"adpulse_billing_fenced_rounds_total", "Billing rounds refused because another node had claimed one of their partitions.", prometheus.CounterValue, nil},
	{"adpulse_billing_ledger_retries_total", "Billing ledger transactions run again after a deadlock or a lost race.", prometheus.CounterValue, nil},
	{"adpulse_billing_journal_conflicts_total", "Spend journal applies the metric store refused because another node had applied them.", prometheus.CounterValue, nil},

	{"adpulse_attribution_events_consumed_total", "Log messages the attribution stage processed.", prometheus.CounterValue, nil},
	{"adpulse_attribution_touches_total", "Valid clicks and views remembered as touches, by what became of them: stored, duplicate, evicted (per-user cap), expired.", prometheus.CounterValue, []string{"outcome"}},
	{"adpulse_attribution_conversions_total", "Conversions decided, by outcome: click, view (the kind of touch credited), uncredited, duplicate.", prometheus.CounterValue, []string{"outcome"}},
	{"adpulse_attribution_reattributed_total", "Credits moved by a late touch.", prometheus.CounterValue, nil},
	{"adpulse_attribution_last_round_seconds", "Processing time of the last round, commit included.", prometheus.GaugeValue, nil},
	{"adpulse_attribution_lag_messages", "Messages in the log not yet attributed, per partition.", prometheus.GaugeValue, []string{"partition"}},
	{"adpulse_attribution_touches_lag_messages", "Shared processing: touches in the touches topic not yet attributed, per partition.", prometheus.GaugeValue, []string{"partition"}},
	{"adpulse_attribution_touches_copied_total", "Shared processing: touches republished to the touches topic, keyed by user.", prometheus.CounterValue, nil},
	{"adpulse_attribution_restarts_total", "Shared processing: attribution consumers restarted from the metric store, by cause: conflict (another node committed the partition; it is rebuilt), fenced (a later owner took it).", prometheus.CounterValue, []string{"cause"}},
	{"adpulse_attribution_journal_unapplied", "Conversion journal entries not yet in the metric store.", prometheus.GaugeValue, nil},
	{"adpulse_attribution_apply_errors_total", "Failed applies of the conversion journal to the metric store (retried).", prometheus.CounterValue, nil},
	{"adpulse_attribution_disk_bytes", "Bytes of the touch store on disk.", prometheus.GaugeValue, nil},
	{"adpulse_ivt_flagged_clicks_total", "Clicks the behavioural rules made invalid after they were recorded as valid (moved to invalid_clicks, credited back), by reason.", prometheus.CounterValue, []string{"reason"}},
	{"adpulse_ivt_late_verdicts_total", "Flagged clicks that were processed before their rule fired (flagged late, with the click that fired it).", prometheus.CounterValue, nil},
	{"adpulse_ivt_clicks_judged_total", "Valid clicks the behavioural rules judged.", prometheus.CounterValue, nil},
	{"adpulse_ivt_credits_total", "Flagged clicks credited back through billing.", prometheus.CounterValue, nil},
	{"adpulse_ivt_credited_micros_total", "Micros credited back for flagged clicks.", prometheus.CounterValue, nil},
	{"adpulse_ivt_credits_pending", "Flagged clicks waiting to be credited back (billing has not charged them yet, or refunds are failing).", prometheus.GaugeValue, nil},
	{"adpulse_ivt_refund_errors_total", "Credit-back attempts that failed and are retried.", prometheus.CounterValue, nil},
	{"adpulse_ivt_lag_messages", "Messages in the log not yet judged by the behavioural rules.", prometheus.GaugeValue, nil},
	{"adpulse_ivt_journal_unapplied", "Metric moves of flagged clicks not yet in the metric store.", prometheus.GaugeValue, nil},
	{"adpulse_ivt_held", "What the behavioural rules hold in memory, by kind: sources (flood and many-ads windows) and impressions.", prometheus.GaugeValue, []string{"kind"}},

	{"adpulse_servingredis_feed_writes_total", "Serving feeds written to the ad servers' Redis (each a new version).", prometheus.CounterValue, nil},
	{"adpulse_servingredis_feed_errors_total", "Serving feed publishes that failed.", prometheus.CounterValue, nil},
	{"adpulse_servingredis_feed_age_seconds", "Time since the serving feed was last published.", prometheus.GaugeValue, nil},
	{"adpulse_servingredis_views_written_total", "User view totals written to the ad servers' Redis.", prometheus.CounterValue, nil},
	{"adpulse_servingredis_views_errors_total", "Failed writes of user views.", prometheus.CounterValue, nil},
	{"adpulse_servingredis_views_pending", "User view totals waiting to be written.", prometheus.GaugeValue, nil},
	{"adpulse_servingredis_resyncs_total", "Full rewrites of user views from the ledger.", prometheus.CounterValue, nil},

	{"adpulse_ratelimit_limited_requests_total", "Requests refused with 429 rate_limited (nothing recorded), by what limited them: ip or key.", prometheus.CounterValue, []string{"kind"}},
	{"adpulse_ratelimit_overflow_requests_total", "Requests of new sources charged to a shared overflow limit because the limiter's table was full, by kind.", prometheus.CounterValue, []string{"kind"}},
	{"adpulse_ratelimit_entries", "Source addresses or API keys with a rate limit bucket held, by kind.", prometheus.GaugeValue, []string{"kind"}},

	{"adpulse_archive_files_written_total", "Parquet files written to the raw archive.", prometheus.CounterValue, nil},
	{"adpulse_archive_bytes_written_total", "Bytes of Parquet files written to the raw archive.", prometheus.CounterValue, nil},
	{"adpulse_archive_events_total", "Events written to the raw archive.", prometheus.CounterValue, nil},
	{"adpulse_archive_errors_total", "Failed reads and writes of the archive target (retried).", prometheus.CounterValue, nil},
	{"adpulse_archive_lost_events_total", "Offsets the log dropped (its retention) before they were archived.", prometheus.CounterValue, nil},
	{"adpulse_archive_lag_messages", "Messages in the log not yet in an archive file, per owned partition.", prometheus.GaugeValue, []string{"partition"}},
	{"adpulse_archive_pending_seconds", "Age of the oldest event waiting in an open archive file, per owned partition.", prometheus.GaugeValue, []string{"partition"}},
	{"adpulse_reconcile_hours_total", "Hours checked against the archive by the hourly reconciliation.", prometheus.CounterValue, nil},
	{"adpulse_reconcile_differences_total", "Buckets where the metric store differed from the archive.", prometheus.CounterValue, nil},
	{"adpulse_reconcile_repaired_total", "Buckets the hourly reconciliation corrected.", prometheus.CounterValue, nil},
	{"adpulse_reconcile_failures_total", "Hourly reconciliations that failed.", prometheus.CounterValue, nil},
	{"adpulse_reconcile_rows_read_total", "Archive rows the hourly reconciliation read (each about once: the reading carries over from hour to hour).", prometheus.CounterValue, nil},
	{"adpulse_reconcile_next_hour_timestamp_seconds", "The next hour the hourly reconciliation will check.", prometheus.GaugeValue, nil},
	{"adpulse_topn_bytes", "Estimated heap of the top-N index.", prometheus.GaugeValue, nil},
	{"adpulse_topn_queries_total", "Top-N queries by how they were answered.", prometheus.CounterValue, []string{"method"}},
	{"adpulse_topn_id_order_builds_total", "Byte orders of the ids built for brute force's ties.", prometheus.CounterValue, nil},
	{"adpulse_topn_id_order_build_seconds_total", "Time the byte order builds took.", prometheus.CounterValue, nil},
}

func newStatsCollector(a *App) *statsCollector {
	c := &statsCollector{a: a, descs: make(map[string]*prometheus.Desc),
		appendWait: prometheus.NewDesc("adpulse_eventlog_append_wait_seconds",
			"How long an append to the local log waited for its group commit, queue and fdatasync included.", nil, nil)}
	for _, d := range collectorDefs {
		c.descs[d.name] = prometheus.NewDesc(d.name, d.help, d.labels, nil)
	}
	return c
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
	ch <- c.appendWait
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	typ := make(map[string]prometheus.ValueType, len(collectorDefs))
	for _, d := range collectorDefs {
		typ[d.name] = d.typ
	}
	emit := func(name string, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(c.descs[name], typ[name], v, labels...)
	}
	ls := c.a.b.logStats()
	emit("adpulse_eventlog_appended_messages_total", float64(ls.AppendedMessages))
	emit("adpulse_eventlog_appended_bytes_total", float64(ls.AppendedBytes))
	emit("adpulse_eventlog_commits_total", float64(ls.Commits))
	emit("adpulse_eventlog_syncs_total", float64(ls.Syncs))
	emit("adpulse_eventlog_checkpoints_total", float64(ls.Checkpoints))
	emit("adpulse_eventlog_sync_seconds_total", ls.SyncTime.Seconds())
	emit("adpulse_eventlog_segments_deleted_total", float64(ls.SegmentsDeleted))
	emit("adpulse_eventlog_rollbacks_total", float64(ls.Rollbacks))
	if h := ls.AppendWait; len(h.Counts) > 0 {
		buckets := make(map[float64]uint64, len(locallog.AppendWaitBounds))
		var cum uint64
		for i, bound := range locallog.AppendWaitBounds {
			cum += uint64(h.Counts[i])
			buckets[bound.Seconds()] = cum
		}
		ch <- prometheus.MustNewConstHistogram(c.appendWait, cum+uint64(h.Counts[len(h.Counts)-1]), h.Sum.Seconds(), buckets)
	}
	for p, ps := range ls.Partitions {
		part := strconv.Itoa(p)
		emit("adpulse_eventlog_end_offset", float64(ps.End), part)
		emit("adpulse_eventlog_start_offset", float64(ps.Start), part)
		emit("adpulse_eventlog_bytes", float64(ps.Bytes), part)
	}
	emit("adpulse_dedup_keys", float64(c.a.b.keyCount()))
	if ks := c.a.b.keySnapshots; ks != nil {
		st := ks.Stats()
		emit("adpulse_dedup_snapshot_writes_total", float64(st.Writes))
		emit("adpulse_dedup_snapshot_failures_total", float64(st.Failures))
		emit("adpulse_dedup_snapshot_keys", float64(st.LastKeys))
		emit("adpulse_dedup_snapshot_write_seconds", st.LastTook.Seconds())
	}
	cs := c.a.b.catalog.Stats()
	emit("adpulse_catalog_objects", float64(cs.Advertisers), "advertiser")
	emit("adpulse_catalog_objects", float64(cs.Campaigns), "campaign")
	emit("adpulse_catalog_objects", float64(cs.Ads), "ad")
	emit("adpulse_catalog_feed_lag_seconds", cs.FeedLagSeconds)
	emit("adpulse_catalog_feed_lag_changes", float64(cs.FeedLagSeq))
	emit("adpulse_catalog_feed_changes_applied_total", float64(cs.FeedChangesApplied))
	emit("adpulse_catalog_feed_reloads_total", float64(cs.FeedReloads))
	emit("adpulse_catalog_feed_poll_errors_total", float64(cs.FeedPollErrors))
	emit("adpulse_catalog_snapshot_writes_total", float64(cs.SnapshotWrites))
	emit("adpulse_catalog_snapshot_failures_total", float64(cs.SnapshotFailures))
	c.collectRateLimits(emit)
	if c.a.ingest != nil {
		c.collectIngest(emit)
	}
	if c.a.process != nil {
		c.collectProcess(emit)
	}
	if c.a.query != nil {
		c.collectQuery(emit)
	}
}

func (c *statsCollector) collectIngest(emit func(name string, v float64, labels ...string)) {
	is := c.a.ingest.intake.Stats()
	emit("adpulse_ingest_events_accepted_total", float64(is.Accepted))
	emit("adpulse_ingest_events_duplicate_total", float64(is.Duplicates))
	emit("adpulse_ingest_record_failures_total", float64(is.Failures))
	emit("adpulse_ingest_too_slow_total", float64(is.TooSlow))
	for reason, n := range is.InvalidClicks {
		emit("adpulse_ingest_invalid_clicks_total", float64(n), reason.String())
	}
	emit("adpulse_ingest_maybe_keys", float64(is.MaybeKeys))
	emit("adpulse_ingest_hot_ads", float64(is.Hot.HotAds))
	emit("adpulse_ingest_salted_events_total", float64(is.Hot.Salted))
	emit("adpulse_ingest_hot_transitions_total", float64(is.Hot.Transitions))
	emit("adpulse_ingest_pinned_keys", float64(is.Hot.Pinned))
	emit("adpulse_ingest_maybe_resolved_total", float64(is.Recovered), "in_log")
	emit("adpulse_ingest_maybe_resolved_total", float64(is.Resolved-is.Recovered), "not_in_log")
}

func (c *statsCollector) collectProcess(emit func(name string, v float64, labels ...string)) {
	p := c.a.process
	as := p.aggregator.Stats()
	emit("adpulse_aggregate_events_consumed_total", float64(as.EventsConsumed))
	emit("adpulse_aggregate_events_counted_total", float64(as.EventsCounted))
	emit("adpulse_aggregate_duplicates_total", float64(as.Duplicates))
	emit("adpulse_aggregate_late_after_final_total", float64(as.LateAfterFinal))
	emit("adpulse_aggregate_commits_total", float64(as.Commits))
	emit("adpulse_aggregate_commit_seconds_total", as.TotalCommitLatency.Seconds())
	emit("adpulse_aggregate_last_commit_seconds", as.LastCommitLatency.Seconds())
	for _, ps := range as.Partitions {
		emit("adpulse_aggregate_lag_messages", float64(ps.Lag), strconv.Itoa(ps.Partition))
	}
	emit("adpulse_aggregate_watermark_delay_seconds", as.WatermarkDelay.Seconds())
	if !as.FinalBefore.IsZero() {
		emit("adpulse_aggregate_final_before_timestamp_seconds", float64(as.FinalBefore.Unix()))
	}

	ms := p.metrics.stats()
	emit("adpulse_metricstore_applies_total", float64(ms.Applies))
	emit("adpulse_metricstore_apply_seconds_total", ms.ApplyTime.Seconds())
	emit("adpulse_metricstore_disk_bytes", float64(ms.DiskBytes))
	emit("adpulse_metricstore_block_cache_hits_total", float64(ms.BlockCacheHits))
	emit("adpulse_metricstore_block_cache_misses_total", float64(ms.BlockCacheMisses))
	emit("adpulse_metricstore_conflicts_total", float64(ms.Conflicts))
	if p.membership != nil {
		emit("adpulse_process_partitions_owned", float64(len(p.membership.Owned())))
	}
	emit("adpulse_aggregate_fenced_total", float64(as.Fenced))

	bs := p.billing.Stats()
	emit("adpulse_billing_events_consumed_total", float64(bs.EventsConsumed))
	emit("adpulse_billing_clicks_charged_total", float64(bs.ClicksCharged))
	emit("adpulse_billing_charged_micros_total", float64(bs.MicrosCharged))
	for reason, n := range bs.ZeroCharge {
		emit("adpulse_billing_zero_charge_clicks_total", float64(n), reason)
	}
	emit("adpulse_billing_refunded_micros_total", float64(bs.MicrosRefunded))
	emit("adpulse_billing_view_duplicates_total", float64(bs.ViewDuplicates))
	emit("adpulse_billing_commit_seconds_total", bs.TotalCommitLatency.Seconds())
	emit("adpulse_billing_commits_total", float64(bs.Commits))
	for _, ps := range bs.Partitions {
		emit("adpulse_billing_lag_messages", float64(ps.Lag), strconv.Itoa(int(ps.Partition)))
	}
	emit("adpulse_billing_journal_unapplied", float64(bs.JournalNext-bs.JournalApplied))
	emit("adpulse_billing_partition_claims_total", float64(bs.Claims))
	emit("adpulse_billing_fenced_rounds_total", float64(bs.Fenced))
	emit("adpulse_billing_ledger_retries_total", float64(bs.Retries))
	emit("adpulse_billing_journal_conflicts_total", float64(bs.MetricConflicts))

	if p.ivt != nil {
		vs := p.ivt.Stats()
		for reason, n := range vs.Flagged {
			emit("adpulse_ivt_flagged_clicks_total", float64(n), reason.String())
		}
		emit("adpulse_ivt_late_verdicts_total", float64(vs.Late))
		emit("adpulse_ivt_clicks_judged_total", float64(vs.ClicksJudged))
		emit("adpulse_ivt_credits_total", float64(vs.Credits))
		emit("adpulse_ivt_credited_micros_total", float64(vs.MicrosCredited))
		emit("adpulse_ivt_credits_pending", float64(vs.CreditsPending))
		emit("adpulse_ivt_refund_errors_total", float64(vs.RefundErrors))
		emit("adpulse_ivt_lag_messages", float64(vs.Lag))
		emit("adpulse_ivt_journal_unapplied", float64(vs.JournalNext-vs.JournalApplied))
		emit("adpulse_ivt_held", float64(vs.Sources), "sources")
		emit("adpulse_ivt_held", float64(vs.Times), "click_times")
		emit("adpulse_ivt_held", float64(vs.Ads), "ads")
		emit("adpulse_ivt_held", float64(vs.PendingClicks), "pending_clicks")
		emit("adpulse_ivt_held", float64(vs.ClickKeys), "click_keys")
		emit("adpulse_ivt_held", float64(vs.Impressions), "impressions")
	}
	if p.serving != nil {
		ss := p.serving.Stats()
		emit("adpulse_servingredis_feed_writes_total", float64(ss.FeedWrites))
		emit("adpulse_servingredis_feed_errors_total", float64(ss.FeedErrors))
		if !ss.FeedPublishedAt.IsZero() {
			emit("adpulse_servingredis_feed_age_seconds", time.Since(ss.FeedPublishedAt).Seconds())
		}
		emit("adpulse_servingredis_views_written_total", float64(ss.ViewsWritten))
		emit("adpulse_servingredis_views_errors_total", float64(ss.ViewsErrors))
		emit("adpulse_servingredis_views_pending", float64(ss.ViewsPending))
		emit("adpulse_servingredis_resyncs_total", float64(ss.Resyncs))
	}
	if p.archiver != nil {
		as := p.archiver.Stats()
		emit("adpulse_archive_files_written_total", float64(as.FilesWritten))
		emit("adpulse_archive_bytes_written_total", float64(as.BytesWritten))
		emit("adpulse_archive_events_total", float64(as.EventsArchived))
		emit("adpulse_archive_errors_total", float64(as.Errors))
		emit("adpulse_archive_lost_events_total", float64(as.Lost))
		for _, ps := range as.Partitions {
			if !ps.Owned {
				continue
			}
			emit("adpulse_archive_lag_messages", float64(ps.Lag), strconv.Itoa(ps.Partition))
			age := 0.0
			if !ps.PendingSince.IsZero() {
				age = time.Since(ps.PendingSince).Seconds()
			}
			emit("adpulse_archive_pending_seconds", age, strconv.Itoa(ps.Partition))
		}
	}
	if p.reconcile != nil {
		rs := p.reconcile.Stats()
		emit("adpulse_reconcile_hours_total", float64(rs.Hours))
		emit("adpulse_reconcile_differences_total", float64(rs.Diffs))
		emit("adpulse_reconcile_repaired_total", float64(rs.Repaired))
		emit("adpulse_reconcile_rows_read_total", float64(rs.Rows))
		emit("adpulse_reconcile_failures_total", float64(rs.Failures))
		emit("adpulse_reconcile_next_hour_timestamp_seconds", float64(rs.Next.Unix()))
	}
	if p.attribution != nil {
		at := p.attribution.Stats()
		emit("adpulse_attribution_events_consumed_total", float64(at.EventsConsumed))
		for outcome, n := range map[string]int64{"stored": at.Touches, "duplicate": at.DuplicateTouches, "evicted": at.TouchesEvicted, "expired": at.TouchesExpired} {
			emit("adpulse_attribution_touches_total", float64(n), outcome)
		}
		for outcome, n := range map[string]int64{"click": at.CreditedClick, "view": at.CreditedView, "uncredited": at.Uncredited, "duplicate": at.DuplicateConversions} {
			emit("adpulse_attribution_conversions_total", float64(n), outcome)
		}
		emit("adpulse_attribution_reattributed_total", float64(at.Reattributed))
		emit("adpulse_attribution_last_round_seconds", float64(at.LastRoundMicros)/1e6)
		for _, ps := range at.Partitions {
			if ps.Touches {
				emit("adpulse_attribution_touches_lag_messages", float64(ps.Lag), strconv.Itoa(ps.Partition))
			} else {
				emit("adpulse_attribution_lag_messages", float64(ps.Lag), strconv.Itoa(ps.Partition))
			}
		}
		if sh := p.attributionShared; sh != nil {
			ss := sh.SharedStats()
			emit("adpulse_attribution_touches_copied_total", float64(ss.TouchesCopied))
			emit("adpulse_attribution_restarts_total", float64(ss.Restarts), "conflict")
			emit("adpulse_attribution_restarts_total", float64(ss.Fenced), "fenced")
		}
		emit("adpulse_attribution_journal_unapplied", float64(at.JournalNext-at.JournalApplied))
		emit("adpulse_attribution_apply_errors_total", float64(at.MetricApplyErrors))
		emit("adpulse_attribution_disk_bytes", float64(at.DiskBytes))
	}
}

func (c *statsCollector) collectQuery(emit func(name string, v float64, labels ...string)) {
	ts := c.a.query.top.Stats()
	emit("adpulse_topn_bytes", float64(ts.Bytes))
	emit("adpulse_topn_queries_total", float64(ts.TAQueries), "threshold")
	emit("adpulse_topn_queries_total", float64(ts.BruteQueries), "brute_force")
	emit("adpulse_topn_queries_total", float64(ts.MemberQueries), "members")
	emit("adpulse_topn_id_order_builds_total", float64(ts.OrderBuilds))
	emit("adpulse_topn_id_order_build_seconds_total", float64(ts.OrderNanos)/1e9)
}
