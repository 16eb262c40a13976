package kafkalog

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// recorder is an Assignee that keeps what it owns and checks the order of calls.
type recorder struct {
	mu    sync.Mutex
	owned map[int32]bool
	errs  []string
}

func (r *recorder) Assign(_ context.Context, parts []int32) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range parts {
		if r.owned[p] {
			r.errs = append(r.errs, fmt.Sprintf("partition %d assigned twice", p))
		}
		r.owned[p] = true
	}
	return nil
}

func (r *recorder) Revoke(parts []int32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range parts {
		if !r.owned[p] {
			r.errs = append(r.errs, fmt.Sprintf("partition %d revoked but not owned", p))
		}
		delete(r.owned, p)
	}
}

func (r *recorder) snapshot() ([]int32, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int32
	for p := range r.owned {
		out = append(out, p)
	}
	slices.Sort(out)
	return out, slices.Clone(r.errs)
}

// TestMembershipSharesPartitions: two members split the partitions with no overlap; when one
// leaves, the other owns them all; a third joining takes a share without any partition ever
// being owned twice at a moment both report.
func TestMembershipSharesPartitions(t *testing.T) {
	const parts = 6
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(parts, testTopic), kfake.GroupMinSessionTimeout(500*time.Millisecond))
	l := open(t, testOptions(c, parts))
	ctx := context.Background()

	join := func() (*Membership, *recorder) {
		r := &recorder{owned: map[int32]bool{}}
		m, err := l.Join(ctx, GroupOptions{Group: "g", Assignee: r, SessionTimeout: time.Second, HeartbeatInterval: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return m, r
	}
	// waitSplit waits until the recorders own disjoint sets covering every partition, each
	// non-empty, and the memberships agree with them.
	waitSplit := func(ms []*Membership, rs []*recorder) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			seen := map[int32]int{}
			ok := true
			var got [][]int32
			for i, r := range rs {
				owned, errs := r.snapshot()
				if len(errs) > 0 {
					t.Fatalf("member %d: %v", i, errs)
				}
				got = append(got, owned)
				if len(owned) == 0 || !slices.Equal(owned, ms[i].Owned()) {
					ok = false
				}
				for _, p := range owned {
					seen[p]++
				}
			}
			if ok && len(seen) == parts {
				for p, n := range seen {
					if n != 1 {
						t.Fatalf("partition %d owned by %d members: %v", p, n, got)
					}
				}
				t.Logf("assignment: %v", got)
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no complete split after 20s: %v", got)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	m1, r1 := join()
	waitSplit([]*Membership{m1}, []*recorder{r1})
	m2, r2 := join()
	waitSplit([]*Membership{m1, m2}, []*recorder{r1, r2})
	m3, r3 := join()
	waitSplit([]*Membership{m1, m2, m3}, []*recorder{r1, r2, r3})

	start := time.Now()
	if err := m2.Close(); err != nil {
		t.Fatal(err)
	}
	if owned, _ := r2.snapshot(); len(owned) != 0 {
		t.Fatalf("a member that left still owns %v", owned)
	}
	waitSplit([]*Membership{m1, m3}, []*recorder{r1, r3})
	t.Logf("takeover after a member left: %v", time.Since(start).Round(time.Millisecond))
	m1.Close()
	m3.Close()
}
