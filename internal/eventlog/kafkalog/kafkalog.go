// Package kafkalog is the scale-out event log: an eventlog.Log on one Kafka topic whose
// partitions are the log's partitions, written and read with franz-go. Ingest processes append
// to it; aggregation, charging and the archive read it by offset, from any process.
//
// Invariants (on top of those of eventlog.Log):
//   - Acknowledged means durable. Append produces with acks=all and the idempotent producer and
//     returns nil only when the brokers acknowledged every record: each is then on every
//     in-sync replica, and on at least min.insync.replicas of them (set when the topic is
//     created; Open warns if an existing topic lets one replica acknowledge alone). Concurrent
//     Appends share produce requests: the client batches whatever is buffered per partition
//     while earlier requests are in flight, which is Kafka's group commit.
//   - Readers see only durable records: reads and end offsets stop at the high watermark,
//     which advances only when all in-sync replicas have a record.
//   - Offsets are Kafka's: dense per partition on a topic with cleanup.policy=delete and no
//     transactions. Open refuses a compacted topic (records would vanish from the middle).
//   - Append times are the producing process's clock (Kafka CreateTime), truncated to the
//     millisecond, because that is the timestamp the producer knows when the brokers
//     acknowledge (franz-go does not hand a LogAppendTime back to the producer). Open refuses
//     a topic with message.timestamp.type=LogAppendTime, since Append would then report times
//     that Read does not return. Times of one partition may step back by a few milliseconds
//     (concurrent Appends, clocks of different ingest processes); OffsetForTime is Kafka's
//     lookup: the earliest offset whose time is at or after t.
//   - Read never waits for new records (fetches ask for no wait) and is served from a
//     per-partition window of fetched records not yet returned, so a consumer reading a
//     partition in small steps costs one fetch per FetchBytes, not one per Read. Records are
//     handed out once from the window: what Read returns is the caller's.
//
// Failure: when the brokers cannot take a record (down, not enough in-sync replicas, no
// leader) the client retries until DeliveryTimeout and Append then fails; nothing of that call
// is acknowledged, though some records may have been written: the error is an unknown
// outcome (not eventlog.ErrNotAppended), so ingest keeps the idempotency keys reserved until
// it has looked for the records in the log, and the stages' duplicate filter (dedup.Window)
// absorbs a copy that still lands twice. To bound Append's time the producer may abandon records
// already sent (AllowIdempotentProduceCancellation): without it, an idempotent producer waits
// indefinitely for a lost response.
//
// Lock order: partition.mu, then Log.metaMu.
package kafkalog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/adpulse/adpulse/internal/eventlog"
)

var _ eventlog.Log = (*Log)(nil)

// Defaults of Options.
const (
	DefaultClientID          = "adpulse"
	DefaultReplicationFactor = 3
	DefaultDeliveryTimeout   = 10 * time.Second
	DefaultFetchBytes        = 256 << 10
)

// Options configure a Log.
type Options struct {
	// Brokers are the seed brokers, host:port.
	Brokers []string
	// Topic holds the log. It is created if missing, with Partitions partitions,
	// ReplicationFactor replicas and TopicConfigs.
	Topic string
	// Partitions is the number of partitions. An existing topic with a different count is an
	// error: events are partitioned by ad, and a different count would move ads.
	Partitions int
	// ReplicationFactor is used when creating the topic. Default 3; an existing topic with
	// fewer replicas is logged as a warning.
	ReplicationFactor int
	// MinInsyncReplicas is the topic's min.insync.replicas when creating it: how many replicas
	// must have a record before acks=all acknowledges it. Default min(2, ReplicationFactor).
	MinInsyncReplicas int
	// TopicConfigs are further topic configs used when creating the topic (retention.ms,
	// segment.bytes, ...). They override the ones Open sets itself.
	TopicConfigs map[string]string
	// ClientID identifies this process to the brokers. Default "adpulse".
	ClientID string
	// Linger is how long a partition's batch waits for more records before it is sent.
	// Default 0: batches form while earlier requests are in flight, so a lone click is not
	// delayed.
	Linger time.Duration
	// DeliveryTimeout bounds how long Append waits for the brokers, retries included, before it
	// fails. Default 10 s; franz-go refuses less than 1 s.
	DeliveryTimeout time.Duration
	// FetchBytes is the least a fetch asks for, however small the Read; the records beyond
	// what the Read returns serve the next Reads of the partition. Default 256 KiB.
	FetchBytes int
	// Logger receives setup warnings and the Kafka client's warnings and errors (its info
	// and debug logs go to slog's debug level). Default: discard.
	Logger *slog.Logger
	// ClientOpts are appended to the franz-go client options (TLS, SASL, tuning, tests).
	ClientOpts []kgo.Opt
}

// Stats are the log's counters, for the server to export as metrics.
type Stats struct {
	AppendedMessages int64 // messages acknowledged by Append
	AppendedBytes    int64 // value bytes acknowledged by Append
	AppendErrors     int64 // Append calls that failed after handing records to the client
	ProduceRequests  int64 // produce requests written to brokers (group commits, retries included)
	ProducedBatches  int64 // partition batches the brokers acknowledged
	Reads            int64 // Read calls that returned messages or reached the end
	ReadsFromWindow  int64 // of those, served from already fetched records, without a fetch
	Fetches          int64 // fetch requests
	FetchedBytes     int64 // value bytes fetched
	Retries          int64 // fetch and offset requests retried after an error (leader moved, ...)
}

// Log is an eventlog.Log on a Kafka topic. It is safe for concurrent use.
type Log struct {
	opts    Options
	topic   string
	logger  *slog.Logger
	cl      *kgo.Client
	adm     *kadm.Client
	decomp  kgo.Decompressor
	parts   []partition
	closed  atomic.Bool
	prodCtx context.Context // lives until Close: records are produced with it, not with a caller's
	stopAll context.CancelFunc
	calls   sync.Pool // of *call

	metaMu  sync.Mutex // guards leaders, topicID, metaGen
	leaders []int32
	topicID [16]byte
	metaGen uint64

	stats struct {
		msgs, bytes, appendErrs, requests, batches       atomic.Int64
		reads, windowReads, fetches, fetchBytes, retries atomic.Int64
	}
}

// Open connects to the brokers, creates the topic if it is missing and checks it if it exists.
func Open(ctx context.Context, o Options) (*Log, error) {
	if len(o.Brokers) == 0 || o.Topic == "" {
		return nil, errors.New("kafkalog: Brokers and Topic are required")
	}
	if o.Partitions <= 0 || o.Partitions > 1<<20 {
		return nil, fmt.Errorf("kafkalog: Partitions %d out of range", o.Partitions)
	}
	if o.ReplicationFactor <= 0 {
		o.ReplicationFactor = DefaultReplicationFactor
	}
	if o.MinInsyncReplicas <= 0 {
		o.MinInsyncReplicas = min(2, o.ReplicationFactor)
	}
	if o.ClientID == "" {
		o.ClientID = DefaultClientID
	}
	if o.DeliveryTimeout <= 0 {
		o.DeliveryTimeout = DefaultDeliveryTimeout
	}
	if o.FetchBytes <= 0 {
		o.FetchBytes = DefaultFetchBytes
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	l := &Log{
		opts:   o,
		topic:  o.Topic,
		logger: o.Logger.With("topic", o.Topic),
		decomp: kgo.DefaultDecompressor(),
		parts:  make([]partition, o.Partitions),
	}
	l.prodCtx, l.stopAll = context.WithCancel(context.Background())
	opts := []kgo.Opt{
		kgo.SeedBrokers(o.Brokers...),
		kgo.ClientID(o.ClientID),
		kgo.DefaultProduceTopic(o.Topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.RequiredAcks(kgo.AllISRAcks()), // the default; written down because it is Guarantee 1
		kgo.ProducerLinger(o.Linger),
		kgo.RecordDeliveryTimeout(o.DeliveryTimeout),
		kgo.AllowIdempotentProduceCancellation(),
		// The producer re-routes failing partitions only after new metadata, which it asks
		// for at most every MetadataMinAge (default 5 s): keep that well below the deadline.
		kgo.MetadataMinAge(min(5*time.Second, o.DeliveryTimeout/4)),
		kgo.WithLogger(kgoLogger{l.logger}),
		kgo.WithHooks(hooks{l}),
	}
	cl, err := kgo.NewClient(append(opts, o.ClientOpts...)...)
	if err != nil {
		l.stopAll()
		return nil, fmt.Errorf("kafkalog: new client: %w", err)
	}
	l.cl, l.adm = cl, kadm.NewClient(cl)
	if err := l.setupTopic(ctx); err != nil {
		l.stopAll()
		cl.Close()
		return nil, err
	}
	return l, nil
}

// setupTopic creates the topic if it is missing, checks what the log relies on, and loads the
// partition leaders.
func (l *Log) setupTopic(ctx context.Context) error {
	tm, err := l.describeTopic(ctx)
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		configs := map[string]*string{
			"cleanup.policy":         new("delete"),
			"message.timestamp.type": new("CreateTime"),
			"min.insync.replicas":    new(strconv.Itoa(l.opts.MinInsyncReplicas)),
		}
		for k, v := range l.opts.TopicConfigs {
			configs[k] = new(v)
		}
		_, err = l.adm.CreateTopic(ctx, int32(l.opts.Partitions), int16(l.opts.ReplicationFactor), configs, l.topic)
		switch {
		case err == nil:
			l.logger.Info("kafkalog: created topic", "partitions", l.opts.Partitions, "replication_factor", l.opts.ReplicationFactor)
		case errors.Is(err, kerr.TopicAlreadyExists): // another process won the race
		default:
			return fmt.Errorf("kafkalog: create topic %q: %w", l.topic, err)
		}
		tm, err = l.waitTopic(ctx)
	}
	if err != nil {
		return err
	}
	if n := len(tm.leaders); n != l.opts.Partitions {
		return fmt.Errorf("kafkalog: topic %q has %d partitions, configured %d (changing the count would move ads between partitions)", l.topic, n, l.opts.Partitions)
	}
	if tm.replicas < l.opts.ReplicationFactor {
		l.logger.Warn("kafkalog: topic has fewer replicas than configured", "replicas", tm.replicas, "configured", l.opts.ReplicationFactor)
	}
	if err := l.checkConfigs(ctx, tm.replicas); err != nil {
		return err
	}
	l.metaMu.Lock()
	l.setMeta(tm)
	l.metaMu.Unlock()
	return nil
}

// topicMeta is what the log needs of the topic's metadata.
type topicMeta struct {
	id       [16]byte
	leaders  []int32 // by partition; -1 while a partition has no leader
	replicas int     // the fewest replicas of any partition
}

// describeTopic loads the topic's metadata from a broker. It asks every time (the client's and
// kadm's cached metadata can be seconds old, and a leader that moved is why we ask).
func (l *Log) describeTopic(ctx context.Context) (topicMeta, error) {
	var tm topicMeta
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = &l.topic
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, l.cl)
	if err != nil {
		return tm, fmt.Errorf("kafkalog: describe topic %q: %w", l.topic, err)
	}
	err = kerr.UnknownTopicOrPartition
	for _, t := range resp.Topics {
		if t.Topic == nil || *t.Topic != l.topic {
			continue
		}
		if err = kerr.ErrorForCode(t.ErrorCode); err != nil {
			break
		}
		tm.id = t.TopicID
		tm.leaders = make([]int32, len(t.Partitions))
		tm.replicas = math.MaxInt
		for _, p := range t.Partitions {
			if p.Partition < 0 || int(p.Partition) >= len(tm.leaders) {
				return tm, fmt.Errorf("kafkalog: describe topic %q: partition %d of %d in metadata", l.topic, p.Partition, len(t.Partitions))
			}
			tm.leaders[p.Partition] = p.Leader
			if p.ErrorCode != 0 {
				tm.leaders[p.Partition] = -1
			}
			tm.replicas = min(tm.replicas, len(p.Replicas))
		}
	}
	if err != nil {
		return tm, fmt.Errorf("kafkalog: describe topic %q: %w", l.topic, err)
	}
	return tm, nil
}

// waitTopic waits for a topic just created to appear in metadata with all its leaders.
func (l *Log) waitTopic(ctx context.Context) (topicMeta, error) {
	deadline := time.Now().Add(30 * time.Second)
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		tm, err := l.describeTopic(ctx)
		if err == nil && len(tm.leaders) > 0 && !slices.Contains(tm.leaders, -1) {
			return tm, nil
		}
		if err != nil && !errors.Is(err, kerr.UnknownTopicOrPartition) && !errors.Is(err, kerr.LeaderNotAvailable) {
			return tm, err
		}
		if time.Now().After(deadline) {
			return tm, fmt.Errorf("kafkalog: topic %q created but not ready: %v", l.topic, err)
		}
		if err := sleep(ctx, wait); err != nil {
			return tm, err
		}
	}
}

// checkConfigs refuses topic settings that break the log's invariants and warns about those
// that weaken durability.
func (l *Log) checkConfigs(ctx context.Context, replicas int) error {
	rcs, err := l.adm.DescribeTopicConfigs(ctx, l.topic)
	if err != nil {
		return fmt.Errorf("kafkalog: describe configs of topic %q: %w", l.topic, err)
	}
	rc, err := rcs.On(l.topic, nil)
	if err != nil {
		return fmt.Errorf("kafkalog: describe configs of topic %q: %w", l.topic, err)
	}
	if rc.Err != nil {
		return fmt.Errorf("kafkalog: describe configs of topic %q: %w", l.topic, rc.Err)
	}
	for _, c := range rc.Configs {
		v := c.MaybeValue()
		switch c.Key {
		case "message.timestamp.type":
			if v == "LogAppendTime" {
				return fmt.Errorf("kafkalog: topic %q uses message.timestamp.type=LogAppendTime; the log needs CreateTime (Append reports the times it produced with)", l.topic)
			}
		case "cleanup.policy":
			if strings.Contains(v, "compact") {
				return fmt.Errorf("kafkalog: topic %q is compacted (cleanup.policy=%s); the log needs cleanup.policy=delete", l.topic, v)
			}
		case "min.insync.replicas":
			if n, _ := strconv.Atoi(v); n < 2 && replicas >= 2 {
				l.logger.Warn("kafkalog: min.insync.replicas is 1: acks=all is then satisfied by the leader alone when the other replicas fall behind", "min_insync_replicas", v, "replicas", replicas)
			}
		}
	}
	return nil
}

// setMeta records the topic id and partition leaders. l.metaMu is held.
func (l *Log) setMeta(tm topicMeta) {
	if l.leaders == nil {
		l.leaders = make([]int32, len(l.parts))
	}
	for i := range l.leaders {
		l.leaders[i] = -1
		if i < len(tm.leaders) {
			l.leaders[i] = tm.leaders[i]
		}
	}
	l.topicID = tm.id
	l.metaGen++
}

// Partitions implements eventlog.Log.
func (l *Log) Partitions() int { return len(l.parts) }

// call is one Append in flight: its records and the count of promises still to come.
type call struct {
	recs    []kgo.Record
	pending atomic.Int64
	done    chan struct{} // receives once, when the last promise ran
	errMu   sync.Mutex
	err     error
	promise func(*kgo.Record, error)
}

func (l *Log) getCall(n int) *call {
	c, _ := l.calls.Get().(*call)
	if c == nil {
		c = &call{done: make(chan struct{}, 1)}
		c.promise = c.finish
	}
	if cap(c.recs) < n {
		c.recs = make([]kgo.Record, n)
	}
	c.recs = c.recs[:n]
	c.err = nil
	return c
}

func (l *Log) putCall(c *call) {
	clear(c.recs) // drop the callers' values
	l.calls.Put(c)
}

// finish is the promise of every record of the call. Promises run on one client goroutine:
// it must not block.
func (c *call) finish(_ *kgo.Record, err error) {
	if err != nil {
		c.errMu.Lock()
		if c.err == nil {
			c.err = err
		}
		c.errMu.Unlock()
	}
	if c.pending.Add(-1) == 0 {
		c.done <- struct{}{}
	}
}

// Append implements eventlog.Log.
//
// ctx is honoured until the records are handed to the client. From then on Append waits for
// the brokers' answer (bounded by DeliveryTimeout): the client reads the values from the
// caller's buffers until then, and a record's context would also cancel the records of other
// Appends batched with it.
func (l *Log) Append(ctx context.Context, msgs []eventlog.Message) error {
	// Until the records are handed to the client nothing can reach a broker: those errors
	// are certain. After it, ctx no longer matters (records are produced under the log's own
	// context) and a failure has an unknown outcome: a broker may have written a batch whose
	// acknowledgement was lost.
	if l.closed.Load() {
		return eventlog.NotAppended(eventlog.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return eventlog.NotAppended(err)
	}
	for i := range msgs {
		if p := msgs[i].Partition; p < 0 || int(p) >= len(l.parts) {
			return eventlog.NotAppended(fmt.Errorf("kafkalog: append to partition %d of %d: %w", p, len(l.parts), eventlog.ErrBadPartition))
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	c := l.getCall(len(msgs))
	defer l.putCall(c)
	// The wall clock, not an injected one: the client measures DeliveryTimeout from the
	// record's timestamp, and a broker may reject times far from its own.
	ts := time.UnixMilli(time.Now().UnixMilli())
	c.pending.Store(int64(len(msgs)))
	for i := range msgs {
		r := &c.recs[i]
		*r = kgo.Record{Topic: l.topic, Partition: msgs[i].Partition, Value: msgs[i].Value, Timestamp: ts}
		l.cl.Produce(l.prodCtx, r, c.promise)
	}
	<-c.done
	if c.err != nil {
		l.stats.appendErrs.Add(1)
		if errors.Is(c.err, kgo.ErrClientClosed) || l.closed.Load() {
			return fmt.Errorf("kafkalog: append: %w (%w)", eventlog.ErrClosed, c.err)
		}
		return fmt.Errorf("kafkalog: append: %w", c.err)
	}
	var bytes int64
	for i := range msgs {
		msgs[i].Offset = c.recs[i].Offset
		msgs[i].Time = ts
		bytes += int64(len(msgs[i].Value))
	}
	l.stats.msgs.Add(int64(len(msgs)))
	l.stats.bytes.Add(bytes)
	return nil
}

// Close waits up to DeliveryTimeout for Appends in flight, then closes the client. Closing
// twice is a no-op.
func (l *Log) Close() error {
	if !l.closed.CompareAndSwap(false, true) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.opts.DeliveryTimeout)
	err := l.cl.Flush(ctx)
	cancel()
	l.stopAll()
	l.cl.Close()
	if err != nil {
		return fmt.Errorf("kafkalog: close: flush appends in flight: %w", err)
	}
	return nil
}

// Stats returns the log's counters since Open. It does no I/O.
func (l *Log) Stats() Stats {
	s := &l.stats
	return Stats{
		AppendedMessages: s.msgs.Load(),
		AppendedBytes:    s.bytes.Load(),
		AppendErrors:     s.appendErrs.Load(),
		ProduceRequests:  s.requests.Load(),
		ProducedBatches:  s.batches.Load(),
		Reads:            s.reads.Load(),
		ReadsFromWindow:  s.windowReads.Load(),
		Fetches:          s.fetches.Load(),
		FetchedBytes:     s.fetchBytes.Load(),
		Retries:          s.retries.Load(),
	}
}

// hooks count what the client does for Stats.
type hooks struct{ l *Log }

var (
	_ kgo.HookProduceBatchWritten = hooks{}
	_ kgo.HookBrokerWrite         = hooks{}
)

func (h hooks) OnProduceBatchWritten(_ kgo.BrokerMetadata, _ string, _ int32, _ kgo.ProduceBatchMetrics) {
	h.l.stats.batches.Add(1)
}

func (h hooks) OnBrokerWrite(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	if key == int16(kmsg.Produce) && err == nil {
		h.l.stats.requests.Add(1)
	}
}

// kgoLogger sends the client's logs to slog: warnings and errors as such, the chatty info and
// debug levels to slog's debug level.
type kgoLogger struct{ l *slog.Logger }

func (k kgoLogger) Level() kgo.LogLevel {
	ctx := context.Background()
	switch {
	case k.l.Enabled(ctx, slog.LevelDebug-4):
		return kgo.LogLevelDebug
	case k.l.Enabled(ctx, slog.LevelDebug):
		return kgo.LogLevelInfo
	case k.l.Enabled(ctx, slog.LevelWarn):
		return kgo.LogLevelWarn
	default:
		return kgo.LogLevelError
	}
}

func (k kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lv := slog.LevelDebug - 4
	switch level {
	case kgo.LogLevelError:
		lv = slog.LevelError
	case kgo.LogLevelWarn:
		lv = slog.LevelWarn
	case kgo.LogLevelInfo:
		lv = slog.LevelDebug
	}
	k.l.Log(context.Background(), lv, "kafka: "+msg, keyvals...)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Ping checks that a broker answers, for readiness.
func (l *Log) Ping(ctx context.Context) error {
	if err := l.cl.Ping(ctx); err != nil {
		return fmt.Errorf("kafkalog: ping: %w", err)
	}
	return nil
}
