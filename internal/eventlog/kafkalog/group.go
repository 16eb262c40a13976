package kafkalog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/adpulse/adpulse/internal/eventlog"
)

// Sharing the log between processes
//
// The stages that read the log (aggregation, charging, the archive) run on every `process`
// node, and each partition must be processed by one node at a time. Membership hands the
// partitions out through a Kafka consumer group with the cooperative-sticky balancer: when a
// node joins, leaves or dies (no heartbeat for SessionTimeout), the group moves only the
// partitions that must move. The group is used for assignment alone: records are read by
// offset through Log.Read, and committed offsets live with each stage's outputs in the shared
// stores (metric store, ledger), where each stage fences a previous owner that has not yet
// noticed it lost a partition. So the group's own offsets are never committed, and a late
// callback can cost a fenced write, never a wrong one.

// Group defaults.
const (
	DefaultSessionTimeout    = 6 * time.Second
	DefaultHeartbeatInterval = time.Second
)

// GroupOptions configure a Membership.
type GroupOptions struct {
	// Group is the consumer group id; every process node of one deployment uses the same one.
	Group string
	// Assignee receives the partitions this process gains and loses, in order: a partition
	// is revoked before it is assigned again.
	Assignee eventlog.Assignee
	// SessionTimeout is how long the brokers wait for a heartbeat before they give a
	// silent member's partitions to the others (default 6 s; Kafka's default minimum).
	// Takeover after a crash takes about this plus one rebalance.
	SessionTimeout time.Duration
	// HeartbeatInterval (default 1 s) is how often the member tells the brokers it is alive.
	HeartbeatInterval time.Duration
	// ClientOpts are appended to the franz-go options (tests, TLS, SASL).
	ClientOpts []kgo.Opt
	Logger     *slog.Logger
}

// Membership is this process's membership of the group that shares the log's partitions.
type Membership struct {
	opts   GroupOptions
	topic  string
	cl     *kgo.Client
	logger *slog.Logger

	mu       sync.Mutex
	owned    map[int32]struct{}
	changed  time.Time
	joined   bool
	errAssig error // the last Assign error, reported by Err
}

// Join joins the consumer group on the log's topic. Assignments arrive through
// opts.Assignee from then on; Close leaves the group.
func (l *Log) Join(ctx context.Context, opts GroupOptions) (*Membership, error) {
	if opts.Group == "" || opts.Assignee == nil {
		return nil, errors.New("kafkalog: GroupOptions.Group and Assignee are required")
	}
	if opts.SessionTimeout <= 0 {
		opts.SessionTimeout = DefaultSessionTimeout
	}
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if opts.Logger == nil {
		opts.Logger = l.logger
	}
	m := &Membership{
		opts: opts, topic: l.topic, owned: make(map[int32]struct{}),
		logger: opts.Logger.With("group", opts.Group),
	}
	kopts := []kgo.Opt{
		kgo.SeedBrokers(l.opts.Brokers...),
		kgo.ClientID(l.opts.ClientID),
		kgo.ConsumerGroup(opts.Group),
		kgo.ConsumeTopics(l.topic),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.DisableAutoCommit(),
		kgo.SessionTimeout(opts.SessionTimeout),
		kgo.HeartbeatInterval(opts.HeartbeatInterval),
		// Callbacks only start and stop stages; they never take long.
		kgo.RebalanceTimeout(max(opts.SessionTimeout, 10*time.Second)),
		kgo.OnPartitionsAssigned(m.onAssigned),
		kgo.OnPartitionsRevoked(m.onRevoked),
		kgo.OnPartitionsLost(m.onRevoked),
		kgo.WithLogger(kgoLogger{m.logger}),
	}
	cl, err := kgo.NewClient(append(append(kopts, l.opts.ClientOpts...), opts.ClientOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("kafkalog: group client: %w", err)
	}
	// Records are read through Log.Read: the group client must not fetch them.
	cl.PauseFetchTopics(l.topic)
	m.cl = cl
	return m, nil
}

func (m *Membership) onAssigned(ctx context.Context, _ *kgo.Client, assigned map[string][]int32) {
	parts := slices.Sorted(slices.Values(assigned[m.topic]))
	m.mu.Lock()
	m.joined = true
	m.changed = time.Now()
	m.mu.Unlock()
	if len(parts) == 0 {
		return
	}
	m.logger.Info("partitions assigned", "partitions", parts)
	err := m.opts.Assignee.Assign(ctx, parts)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		// The stages could not take the partitions (a backend down): leave them unowned here
		// and let the error show in readiness; the group keeps them assigned to this member,
		// so leaving the group is how an operator hands them on (restart the node).
		m.errAssig = fmt.Errorf("assign partitions %v: %w", parts, err)
		m.logger.Error("assigning partitions failed", "partitions", parts, "err", err)
		return
	}
	m.errAssig = nil
	for _, p := range parts {
		m.owned[p] = struct{}{}
	}
}

func (m *Membership) onRevoked(_ context.Context, _ *kgo.Client, revoked map[string][]int32) {
	parts := slices.Sorted(slices.Values(revoked[m.topic]))
	if len(parts) == 0 {
		return
	}
	m.logger.Info("partitions revoked", "partitions", parts)
	m.opts.Assignee.Revoke(parts)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.changed = time.Now()
	for _, p := range parts {
		delete(m.owned, p)
	}
}

// Owned returns the partitions this process owns now, in order.
func (m *Membership) Owned() []int32 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Sorted(func(yield func(int32) bool) {
		for p := range m.owned {
			if !yield(p) {
				return
			}
		}
	})
}

// Err reports why the last assignment could not be taken, or nil.
func (m *Membership) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.errAssig
}

// Joined reports whether the group has given this member an assignment yet (possibly empty).
func (m *Membership) Joined() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.joined
}

// Close leaves the group (its partitions are revoked through the Assignee first, so the
// others take them over at once instead of after SessionTimeout).
func (m *Membership) Close() error {
	m.cl.Close()
	return nil
}
