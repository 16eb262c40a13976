package kafkalog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
)

const testTopic = "adpulse-events"

// newCluster starts an in-process Kafka that is closed when the test ends.
func newCluster(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// logBuf collects a Log's logs; tests read it after the Log is closed.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *logBuf) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *logBuf) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

func testOptions(c *kfake.Cluster, partitions int) Options {
	return Options{
		Brokers:           c.ListenAddrs(),
		Topic:             testTopic,
		Partitions:        partitions,
		ReplicationFactor: 1,
		DeliveryTimeout:   5 * time.Second,
	}
}

func open(t testing.TB, o Options) *Log {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l, err := Open(ctx, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// TestConformance runs the eventlog suite on a three-broker kfake cluster, so partitions have
// different leaders; the topic is created by Open.
func TestConformance(t *testing.T) {
	eventlogtest.Run(t, func(t *testing.T, partitions int) eventlogtest.Opener {
		c := newCluster(t, kfake.NumBrokers(3))
		return func(t *testing.T) eventlog.Log {
			o := testOptions(c, partitions)
			o.ReplicationFactor = 3
			l, err := Open(context.Background(), o)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			return l
		}
	})
}

// TestConformanceSmallFetches runs the suite with fetches no larger than the reads, so every
// code path of the read window is taken.
func TestConformanceSmallFetches(t *testing.T) {
	eventlogtest.Run(t, func(t *testing.T, partitions int) eventlogtest.Opener {
		c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(int32(partitions), testTopic))
		return func(t *testing.T) eventlog.Log {
			o := testOptions(c, partitions)
			o.FetchBytes = 1
			l, err := Open(context.Background(), o)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			return l
		}
	})
}

func TestCreatesTopic(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(3))
	o := testOptions(c, 6)
	o.ReplicationFactor = 3
	o.TopicConfigs = map[string]string{"retention.ms": "3600000"}
	open(t, o)
	ti := c.TopicInfo(testTopic)
	if ti == nil {
		t.Fatal("topic not created")
	}
	if n := len(c.PartitionInfos(testTopic)); n != 6 {
		t.Errorf("created %d partitions, want 6", n)
	}
	if ti.NumReplicas != 3 {
		t.Errorf("created %d replicas, want 3", ti.NumReplicas)
	}
	for k, want := range map[string]string{
		"min.insync.replicas":    "2",
		"message.timestamp.type": "CreateTime",
		"cleanup.policy":         "delete",
		"retention.ms":           "3600000",
	} {
		if v := ti.Configs[k]; v == nil || *v != want {
			t.Errorf("config %s = %v, want %s", k, v, want)
		}
	}
	// A second process opening the same topic finds it as it is.
	open(t, o)
}

func TestExistingTopic(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(4, testTopic))
	open(t, testOptions(c, 4))

	_, err := Open(context.Background(), testOptions(c, 3))
	if err == nil || !strings.Contains(err.Error(), "has 4 partitions, configured 3") {
		t.Errorf("Open with a different partition count = %v, want a partition count error", err)
	}
}

func TestRefusesTopicSettings(t *testing.T) {
	for _, tc := range []struct {
		config, value, want string
	}{
		{"message.timestamp.type", "LogAppendTime", "LogAppendTime"},
		{"cleanup.policy", "compact", "compacted"},
		{"cleanup.policy", "delete,compact", "compacted"},
	} {
		t.Run(tc.config+"="+tc.value, func(t *testing.T) {
			c := newCluster(t, kfake.NumBrokers(1))
			if err := c.CreateTopic(testTopic, 2, map[string]string{tc.config: tc.value}); err != nil {
				t.Fatal(err)
			}
			_, err := Open(context.Background(), testOptions(c, 2))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open = %v, want an error about %s", err, tc.want)
			}
		})
	}
}

func TestWarnsAboutMinInsyncReplicas(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(3))
	if err := c.CreateTopic(testTopic, 2, map[string]string{"min.insync.replicas": "1"}); err != nil {
		t.Fatal(err)
	}
	var logs logBuf
	o := testOptions(c, 2)
	o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	l := open(t, o)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "min.insync.replicas is 1") {
		t.Errorf("no warning about min.insync.replicas=1; logs:\n%s", logs.String())
	}
}

func TestOptionErrors(t *testing.T) {
	for _, o := range []Options{
		{Topic: "t", Partitions: 1},
		{Brokers: []string{"127.0.0.1:1"}, Partitions: 1},
		{Brokers: []string{"127.0.0.1:1"}, Topic: "t"},
	} {
		if _, err := Open(context.Background(), o); err == nil {
			t.Errorf("Open(%+v) = nil error", o)
		}
	}
}

func appendN(t *testing.T, l *Log, partition, n int, tag string) []eventlog.Message {
	t.Helper()
	ms := make([]eventlog.Message, n)
	for i := range ms {
		ms[i] = eventlog.Message{Partition: int32(partition), Value: fmt.Appendf(nil, "%s-%d", tag, i)}
	}
	if err := l.Append(context.Background(), ms); err != nil {
		t.Fatalf("Append: %v", err)
	}
	return ms
}

func end(t *testing.T, l *Log, p int) int64 {
	t.Helper()
	_, e, err := l.Offsets(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestBrokerFailureFailsAppend: when the brokers cannot make records durable, Append fails
// within DeliveryTimeout and nothing becomes readable; once they recover, Append works again.
func TestBrokerFailureFailsAppend(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, testTopic))
	o := testOptions(c, 2)
	o.DeliveryTimeout = time.Second
	l := open(t, o)
	appendN(t, l, 0, 3, "before")

	// Not enough in-sync replicas: what acks=all answers when it cannot replicate. The broker
	// rejects the records without writing them, the client retries until its deadline.
	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.NotEnoughReplicas, Count: -1})
	begin := time.Now()
	ms := []eventlog.Message{{Partition: 0, Value: []byte("lost")}, {Partition: 1, Value: []byte("lost")}}
	err := l.Append(context.Background(), ms)
	if err == nil {
		t.Fatal("Append succeeded while every produce failed")
	}
	if el := time.Since(begin); el > 10*time.Second {
		t.Errorf("Append took %v to fail, DeliveryTimeout is %v", el, o.DeliveryTimeout)
	}
	t.Logf("Append while brokers refuse: %v (after %v)", err, time.Since(begin))
	if h.Hits() == 0 {
		t.Error("the fault never answered a produce request")
	}
	for p, want := range []int64{3, 0} {
		if e := end(t, l, p); e != want {
			t.Errorf("partition %d: end offset %d after a failed Append, want %d", p, e, want)
		}
	}
	if st := l.Stats(); st.AppendErrors != 1 || st.AppendedMessages != 3 {
		t.Errorf("stats after a failed Append: %+v", st)
	}

	h.Remove()
	got := appendN(t, l, 0, 1, "after")
	if got[0].Offset != 3 {
		t.Errorf("first Append after recovery at offset %d, want 3", got[0].Offset)
	}
}

// TestBrokerGone: with the whole cluster gone, Append fails within DeliveryTimeout (the
// producer gives up on records it may already have sent rather than wait forever).
func TestBrokerGone(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, testTopic))
	o := testOptions(c, 1)
	o.DeliveryTimeout = time.Second
	l := open(t, o)
	appendN(t, l, 0, 1, "before")
	c.Close()
	begin := time.Now()
	err := l.Append(context.Background(), []eventlog.Message{{Value: []byte("lost")}})
	if err == nil {
		t.Fatal("Append succeeded with no broker")
	}
	if el := time.Since(begin); el > 15*time.Second {
		t.Errorf("Append took %v to fail, DeliveryTimeout is %v", el, o.DeliveryTimeout)
	}
	t.Logf("Append with no broker: %v (after %v)", err, time.Since(begin))
	if errors.Is(err, eventlog.ErrClosed) {
		t.Errorf("Append error %v says the log is closed; it is not", err)
	}
}

// TestPartialFailure: a batch over two partitions whose second partition cannot be written
// fails as a whole, although the first partition's records may be durable (which the contract
// allows: they were never acknowledged).
func TestPartialFailure(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, testTopic))
	o := testOptions(c, 2)
	o.DeliveryTimeout = time.Second
	l := open(t, o)
	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: testTopic, Partitions: []int32{1}, Err: kerr.NotEnoughReplicas, Count: -1})
	defer h.Remove()
	err := l.Append(context.Background(), []eventlog.Message{{Partition: 0, Value: []byte("a")}, {Partition: 1, Value: []byte("b")}})
	if err == nil {
		t.Fatal("Append succeeded though partition 1 refused its record")
	}
	t.Logf("end offsets after the failed Append: p0 %d, p1 %d", end(t, l, 0), end(t, l, 1))
	if e := end(t, l, 1); e != 0 {
		t.Errorf("partition 1 end %d, want 0", e)
	}
}

// TestRetryAfterWrittenIsNotDuplicated: the broker writes a batch but answers with a retriable
// error (NOT_ENOUGH_REPLICAS_AFTER_APPEND); the idempotent producer's retry is recognised by the
// broker, so the record is in the log once.
func TestRetryAfterWrittenIsNotDuplicated(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, testTopic))
	l := open(t, testOptions(c, 1))
	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.NotEnoughReplicasAfterAppend, Count: 1})
	ms := appendN(t, l, 0, 5, "once")
	if h.Hits() != 1 {
		t.Fatalf("fault hits %d, want 1", h.Hits())
	}
	if e := end(t, l, 0); e != 5 {
		t.Errorf("end offset %d after 5 records with one retried batch, want 5", e)
	}
	if ms[4].Offset != 4 {
		t.Errorf("last record at offset %d, want 4", ms[4].Offset)
	}
}

// TestLeaderMoves: reads, offsets and appends follow partitions to their new leaders.
func TestLeaderMoves(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(3), kfake.SeedTopics(4, testTopic))
	l := open(t, testOptions(c, 4))
	ctx := context.Background()
	for p := range 4 {
		appendN(t, l, p, 10, "a")
		if got, err := l.Read(ctx, p, 0, 1<<20); err != nil || len(got) != 10 {
			t.Fatalf("Read(%d) = %d messages, %v", p, len(got), err)
		}
	}
	for p := range 4 {
		old := c.LeaderFor(testTopic, int32(p))
		if err := c.MoveTopicPartition(testTopic, int32(p), (old+1)%3); err != nil {
			t.Fatal(err)
		}
	}
	for p := range 4 {
		appendN(t, l, p, 10, "b")
		got, err := l.Read(ctx, p, 0, 1<<20)
		if err != nil || len(got) != 20 {
			t.Fatalf("after the leader moved, Read(%d) = %d messages, %v", p, len(got), err)
		}
		if e := end(t, l, p); e != 20 {
			t.Errorf("after the leader moved, end of %d = %d, want 20", p, e)
		}
	}
	if st := l.Stats(); st.Retries == 0 {
		t.Logf("no retries counted: the moves were noticed by metadata refresh first (%+v)", st)
	}
}

// TestReadWindow: small Reads of a partition are answered from one fetch.
func TestReadWindow(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, testTopic))
	o := testOptions(c, 1)
	o.FetchBytes = 1 << 20
	l := open(t, o)
	ms := appendN(t, l, 0, 1000, "w")
	ctx := context.Background()
	before := l.Stats()
	var next int64
	for next < 1000 {
		got, err := l.Read(ctx, 0, next, 100)
		if err != nil || len(got) == 0 {
			t.Fatalf("Read at %d: %d messages, %v", next, len(got), err)
		}
		for _, m := range got {
			if m.Offset != next || !bytes.Equal(m.Value, ms[next].Value) {
				t.Fatalf("Read at %d returned offset %d %q", next, m.Offset, m.Value)
			}
			next++
		}
	}
	st := l.Stats()
	if f := st.Fetches - before.Fetches; f != 1 {
		t.Errorf("%d fetches for 1000 small records read in steps of 100 bytes, want 1", f)
	}
	if st.ReadsFromWindow == 0 {
		t.Errorf("no Read answered from the window: %+v", st)
	}
	// Jumping back misses the window and fetches again.
	got, err := l.Read(ctx, 0, 10, 100)
	if err != nil || len(got) == 0 || got[0].Offset != 10 {
		t.Fatalf("Read back at 10 = %v, %v", got, err)
	}
}

// TestReadBelowRetained: records deleted by retention (here DeleteRecords) are out of range.
func TestReadBelowRetained(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, testTopic))
	l := open(t, testOptions(c, 1))
	appendN(t, l, 0, 10, "r")
	if err := c.DeleteRecords(testTopic, 0, 4); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	start, e, err := l.Offsets(ctx, 0)
	if err != nil || start != 4 || e != 10 {
		t.Fatalf("Offsets = %d, %d, %v; want 4, 10", start, e, err)
	}
	if _, err := l.Read(ctx, 0, 2, 1<<20); !errors.Is(err, eventlog.ErrOffsetOutOfRange) {
		t.Errorf("Read below the start = %v, want ErrOffsetOutOfRange", err)
	}
	got, err := l.Read(ctx, 0, 4, 1<<20)
	if err != nil || len(got) != 6 || got[0].Offset != 4 {
		t.Errorf("Read at the start = %d messages, %v", len(got), err)
	}
}

// TestCloseWithAppendsInFlight: Close lets Appends in flight finish; each either succeeds (and
// is readable after reopening) or fails.
func TestCloseWithAppendsInFlight(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, testTopic))
	l := open(t, testOptions(c, 1))
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := map[string]int64{}
	for g := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				m := []eventlog.Message{{Value: fmt.Appendf(nil, "g%d-%d", g, i)}}
				if err := l.Append(context.Background(), m); err != nil {
					if !errors.Is(err, eventlog.ErrClosed) {
						t.Errorf("Append during Close: %v, want ErrClosed", err)
					}
					return
				}
				mu.Lock()
				acked[string(m[0].Value)] = m[0].Offset
				mu.Unlock()
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	wg.Wait()
	l = open(t, testOptions(c, 1))
	var next int64
	for {
		got, err := l.Read(context.Background(), 0, next, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			break
		}
		for _, m := range got {
			if off, ok := acked[string(m.Value)]; ok && off != m.Offset {
				t.Errorf("%q acknowledged at %d, read at %d", m.Value, off, m.Offset)
			}
			delete(acked, string(m.Value))
			next = m.Offset + 1
		}
	}
	if len(acked) > 0 {
		t.Errorf("%d acknowledged messages not in the log", len(acked))
	}
}
