package memlimit

import (
	"bytes"
	"log/slog"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Spec
	}{
		{"auto", Spec{Auto: true}},
		{" AUTO ", Spec{Auto: true}},
		{"off", Spec{}},
		{"0", Spec{}},
		{"4GiB", Spec{Bytes: 4 << 30}},
		{"4gib", Spec{Bytes: 4 << 30}},
		{"1.5GiB", Spec{Bytes: 3 << 29}},
		{"512MiB", Spec{Bytes: 512 << 20}},
		{"512M", Spec{Bytes: 512 << 20}},
		{"2GB", Spec{Bytes: 2e9}},
		{"100000000", Spec{Bytes: 1e8}},
		{"100000000b", Spec{Bytes: 1e8}},
		{"60%", Spec{Percent: 60}},
		{"100%", Spec{Percent: 100}},
		{"12.5 %", Spec{Percent: 12.5}},
	} {
		got, err := Parse(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"-1GiB", "0%", "101%", "x%", "4XB", "GiB", "1MiB", "1e30GiB", "NaN", "Inf"} {
		if s, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", in, s)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"auto", "4GiB", "60%", "1.5g", "0", "off", "-3", "1e400"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := Parse(s)
		if err != nil {
			return
		}
		if spec.Bytes < 0 || (spec.Bytes > 0 && spec.Bytes < minBudget) || spec.Percent < 0 || spec.Percent > 100 {
			t.Fatalf("Parse(%q) = %+v", s, spec)
		}
		b, _, err := spec.Budget(Machine{Total: 8 << 30})
		if err != nil || b < 0 || (b > 0 && b < minBudget) {
			t.Fatalf("Parse(%q) = %+v: budget %d, %v", s, spec, b, err)
		}
	})
}

func TestBudget(t *testing.T) {
	machine := Machine{Total: 16 << 30}
	container := Machine{Total: 16 << 30, ContainerLimit: 4 << 30}
	for _, tc := range []struct {
		spec Spec
		m    Machine
		want int64
	}{
		{Spec{Bytes: 3 << 30}, container, 3 << 30},
		{Spec{Percent: 50}, machine, 8 << 30},
		{Spec{Percent: 50}, container, 2 << 30},
		{Spec{Auto: true}, machine, 0},
		{Spec{Auto: true}, container, 4 << 30 * 9 / 10},
		{Spec{}, container, 0},
		{Spec{Percent: 0.001}, machine, minBudget},
	} {
		got, from, err := tc.spec.Budget(tc.m)
		if err != nil || got != tc.want {
			t.Errorf("%+v on %+v: %d (%s), %v; want %d", tc.spec, tc.m, got, from, err, tc.want)
		}
	}
	if _, _, err := (Spec{Percent: 50}).Budget(Machine{}); err == nil {
		t.Error("a share with no memory figure resolved")
	}
}

// TestReadMachine reads the real machine: whatever it finds must be usable as a base.
func TestReadMachine(t *testing.T) {
	m := ReadMachine()
	if m.Total == 0 {
		t.Skip("no /proc/meminfo here")
	}
	if m.ContainerLimit < 0 || (m.ContainerLimit > 0 && m.ContainerLimit >= m.Total) {
		t.Fatalf("%+v: a container limit at or above the machine's memory is no limit", m)
	}
}

func TestGovernorSubtractsOutsideMemory(t *testing.T) {
	const budget = 1 << 30
	var logs bytes.Buffer
	g := New(budget, time.Hour, slog.New(slog.NewTextHandler(&logs, nil)))
	var set []int64
	g.set = func(v int64) int64 { set = append(set, v); return 0 }
	outside := int64(200 << 20)
	g.outside = func() int64 { return outside }

	g.adjust()
	if len(set) != 1 || set[0] != budget-200<<20 {
		t.Fatalf("limits set %v, want the budget less 200 MiB", set)
	}
	outside += 5 << 20 // under 1 % of the budget: not applied
	g.adjust()
	if len(set) != 1 {
		t.Fatalf("a change under 1%% was applied: %v", set)
	}
	outside = 600 << 20
	g.adjust()
	if len(set) != 2 || set[1] != budget-600<<20 {
		t.Fatalf("limits set %v, want the budget less 600 MiB", set)
	}
	outside = 2 << 30 // more than the budget: the floor holds
	g.adjust()
	if got := set[len(set)-1]; got != budget/4 {
		t.Fatalf("limit %d with everything outside, want the floor %d", got, budget/4)
	}
	st := g.Stats()
	if st.Budget != budget || st.GoLimit != budget/4 || st.OutsideGo != 2<<30 || st.Adjustments != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestGovernorWarnsOnceWhenLiveHeapNearLimit(t *testing.T) {
	var logs bytes.Buffer
	g := New(minBudget, time.Hour, slog.New(slog.NewTextHandler(&logs, nil)))
	g.set = func(int64) int64 { return 0 }
	g.outside = func() int64 { return minBudget } // the limit falls to its floor, 16 MiB
	keep := make([]byte, 32<<20)                  // live beyond it
	debug.FreeOSMemory()                          // a collection, so the live figure is current
	g.adjust()
	g.adjust()
	if n := strings.Count(logs.String(), "live heap is near the memory limit"); n != 1 {
		t.Fatalf("warned %d times, want once:\n%s", n, logs.String())
	}
	if g.Stats().LiveHeap < int64(len(keep)) {
		t.Fatalf("live heap %d, want at least the %d held", g.Stats().LiveHeap, len(keep))
	}
	runtime.KeepAlive(keep)
}

// TestOutsideRuntimeCountsOnlyForeignMemory: 256 MiB more held in the Go heap must not move
// the estimate (a sign error or a unit slip would), except under the race detector, whose
// shadow of every written heap byte is C memory, about twice the heap, and must show.
func TestOutsideRuntimeCountsOnlyForeignMemory(t *testing.T) {
	if outsideRuntime() == 0 && runtimeHeld() == 0 {
		t.Skip("no /proc here")
	}
	const held = 256 << 20
	before := outsideRuntime()
	keep := make([]byte, held)
	for i := range keep {
		keep[i] = 1
	}
	grew := outsideRuntime() - before
	runtime.KeepAlive(keep)
	if raceEnabled {
		if grew < held*3/2 || grew > held*5/2 { // without the runtime subtracted it would be 3x
			t.Fatalf("the estimate grew by %d bytes for %d written under the race detector, want its shadow (1.5-2.5x)", grew, held)
		}
		return
	}
	if grew > held/4 {
		t.Fatalf("the estimate grew by %d bytes for %d held in the Go heap", grew, held)
	}
}
