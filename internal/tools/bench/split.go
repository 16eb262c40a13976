package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/adpulse/adpulse/internal/clicktoken"
	"github.com/twmb/franz-go/pkg/kfake"
)

// The split deployment (--split): the scale-out shape of the contract on this one machine, to
// set beside the embedded process in the same run. Two ingest nodes take the clicks and
// batches (the load spreads its connections over both), two process nodes share the log's
// partitions through the Kafka consumer group, and a query node answers /metrics and
// /metrics/top, over the Redis, SQL database and ClickHouse given. Kafka is kfake, in the
// bench process: it speaks the real protocol but keeps everything in memory, so the figures
// are adpulse's own cost of the split (network hops, the shared stores), not a Kafka
// cluster's. All five nodes share the machine's cores with the load generator and with the
// services, so compare the two columns of one run, never against another machine.

const splitPartitions = 8

// startSplit starts the split deployment and returns its target: base is the query node,
// ingest the ingest nodes, and the resource rows sum the five adpulse processes.
func (b *runner) startSplit(ctx context.Context) (*target, func(), error) {
	o := b.o
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		return nil, nil, fmt.Errorf("split: Kafka: %w", err)
	}
	bin, err := b.binary()
	if err != nil {
		cluster.Close()
		return nil, nil, err
	}
	secret := "bench:" + randomHex(32)
	keys, err := clicktoken.ParseKeyring(secret)
	if err != nil {
		cluster.Close()
		return nil, nil, err
	}
	adminKey := "adp_admin_bench_" + randomHex(16)
	shared := []string{
		"--event-log", "kafka", "--kafka-brokers", strings.Join(cluster.ListenAddrs(), ","),
		"--kafka-topic", "bench-" + b.runID, "--kafka-group", "bench-process-" + b.runID, "--ledger-prefix", "bench_" + b.runID + "_",
		"--kafka-replication-factor", "1", "--partitions", fmt.Sprint(splitPartitions),
		"--dedup", "redis", "--redis-addr", o.RedisAddr, "--catalog-dsn", o.SplitCatalogDSN,
		"--metric-store", "clickhouse", "--clickhouse-addr", o.ClickHouseAddr, "--clickhouse-database", "adpulse_bench_" + b.runID,
	}
	var children []*child
	stopAll := func() {
		for i := len(children) - 1; i >= 0; i-- {
			if err := children[i].stop(); err != nil {
				b.logf("split %s stop: %v", children[i].name, err)
			}
		}
		cluster.Close()
	}
	start := func(name, roles string) (*child, error) {
		c := &child{name: name, bin: bin, dataDir: filepath.Join(b.workDir, "split-"+name), logDir: b.workDir, adminKey: adminKey, secret: secret,
			extra: append(append([]string{"--roles", roles}, shared...), o.ServeArgs...)}
		d, err := c.start(ctx)
		if err != nil {
			return nil, fmt.Errorf("split: %s: %w", name, err)
		}
		b.logf("split %s (%s) ready in %v: api %s", name, roles, d.Round(1e6), c.api)
		children = append(children, c)
		return c, nil
	}
	var query *child
	var ingest []string
	for _, n := range []struct{ name, roles string }{
		{"process-1", "process"}, {"process-2", "process"}, {"query", "query"}, {"ingest-1", "ingest"}, {"ingest-2", "ingest"},
	} {
		c, err := start(n.name, n.roles)
		if err != nil {
			stopAll()
			return nil, nil, err
		}
		switch n.roles {
		case "query":
			query = c
		case "ingest":
			ingest = append(ingest, "http://"+c.api)
		}
	}
	t := &target{
		name: "adpulse split", base: "http://" + query.api, adminKey: adminKey, keys: keys, catalog: true,
		client: newAPIClient(64), ingest: ingest,
		pids: func(context.Context) []int {
			pids := make([]int, len(children))
			for i, c := range children {
				pids[i] = c.pid()
			}
			return pids
		},
		resNote: "sum of the five adpulse processes (2 ingest, 2 process, 1 query); Kafka (kfake) runs in the bench process, Redis, PostgreSQL and ClickHouse are not counted",
	}
	return t, stopAll, nil
}
