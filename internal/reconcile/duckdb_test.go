package reconcile

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/duckdb/duckdb-go/v2" // the independent reader; test code of this package only

	"github.com/adpulse/adpulse/internal/metricstore"
	"github.com/adpulse/adpulse/internal/testseed"
)

// duckCountsSQL counts the archive's ad minutes in plain SQL, as a DuckDB, Trino or Spark
// user would: Hive-partitioned Parquet, the stream's duplicate rule as a window function
// (an event repeats one of the same key in its partition received at most the span before
// it, by offset order), then the counting rules. Placeholders: glob, span, from, to (µs).
const duckCountsSQL = `
WITH r AS (
  SELECT "partition" AS part, "offset" AS off, type, name, invalid_reason, ad_id,
         epoch_us(event_time) AS et, epoch_us(recv_time) AS rt,
         CASE
           WHEN type IN ('impression', 'click') AND invalid_reason IS NOT NULL AND impression_id IS NOT NULL
             THEN 'x:' || type || ':' || invalid_reason || ':' || impression_id
           WHEN type IN ('impression', 'click') AND impression_id IS NOT NULL THEN type || ':' || impression_id
           WHEN event_id IS NOT NULL THEN 'e:' || event_id
           WHEN impression_id IS NOT NULL THEN 't:' || coalesce(name, '') || ':' || impression_id
         END AS k
  FROM read_parquet('%s', hive_partitioning = true)
), m AS (
  SELECT *, max(rt) OVER (PARTITION BY part, k ORDER BY off ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev
  FROM r
)
SELECT ad_id, et // 60000000 AS minute,
       count(*) FILTER (WHERE type = 'impression') AS impressions,
       count(*) FILTER (WHERE type = 'click' AND invalid_reason IS NULL) AS clicks,
       count(*) FILTER (WHERE type = 'click' AND invalid_reason IS NOT NULL) AS invalid_clicks,
       count(*) FILTER (WHERE type = 'interaction') AS interactions
FROM m
WHERE (k IS NULL OR prev IS NULL OR rt - prev > %d)
  AND et >= %d AND et < %d
  AND (type = 'click' OR invalid_reason IS NULL)
GROUP BY ALL`

// TestDuckDBReadsTheSameCounts: DuckDB, reading the archive's Parquet files on its own,
// computes the same per-ad, per-minute counts as the reconciliation (and so as the store).
func TestDuckDBReadsTheSameCounts(t *testing.T) {
	p := newPipeline(t, testseed.Seed(t))
	from, to := p.h0, p.h0.Add(3*time.Hour)
	o := p.options
	o.setDefaults()
	want, err := countHours(context.Background(), newCounter(&o, from, to), from, to, &Report{})
	if err != nil {
		t.Fatal(err)
	}

	db, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	q := fmt.Sprintf(duckCountsSQL, filepath.Join(p.dir, "dt=*", "hour=*", "*.parquet"), dedupSpan.Microseconds(), from.UnixMicro(), to.UnixMicro())
	rows, err := db.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[Key]metricstore.Counts{}
	for rows.Next() {
		var ad string
		var minute, imp, clk, inv, inter int64
		if err := rows.Scan(&ad, &minute, &imp, &clk, &inv, &inter); err != nil {
			t.Fatal(err)
		}
		c := metricstore.Counts{Impressions: imp, Clicks: clk, InvalidClicks: inv}
		if inter != 0 {
			c.AddInteraction("*", inter)
		}
		got[Key{metricstore.LevelAd, ad, minute}] = c
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for k, w := range want {
		if k.Level != metricstore.LevelAd {
			continue
		}
		n++
		var inter int64
		for _, v := range w.Interactions {
			inter += v
		}
		g := got[k]
		if g.Impressions != w.Impressions || g.Clicks != w.Clicks || g.InvalidClicks != w.InvalidClicks || g.Interactions["*"] != inter {
			t.Errorf("%v: DuckDB %v, reconcile %v", k, g, w)
		}
		delete(got, k)
	}
	for k, g := range got {
		t.Errorf("%v: DuckDB counts %v, the reconciliation nothing", k, g)
	}
	t.Logf("DuckDB and the reconciliation agree on %d ad minutes", n)
}
