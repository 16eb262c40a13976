package archive

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

// memTarget is a Target over a map, for the reader's tests.
type memTarget struct{ files map[string][]byte }

func (m *memTarget) Put(_ context.Context, k string, b []byte) error { m.files[k] = b; return nil }
func (m *memTarget) Get(_ context.Context, k string) ([]byte, error) {
	if b, ok := m.files[k]; ok {
		return b, nil
	}
	return nil, errors.New("not found")
}
func (m *memTarget) List(context.Context, string) ([]string, error) { return nil, nil }
func (m *memTarget) Delete(context.Context, string) error           { return nil }
func (m *memTarget) DeleteAll(context.Context, string) error        { return nil }
func (m *memTarget) String() string                                 { return "mem" }

// FuzzReadFile: whatever bytes a file holds (a foreign or damaged object in the bucket),
// ReadFile returns rows or an error; it never panics.
func FuzzReadFile(f *testing.F) {
	l := newMemLog(1)
	g := &gen{rng: rand.New(rand.NewPCG(1, 1)), recv: t0.UnixMicro(), step: 10 * time.Millisecond}
	l.appendEvents(0, g.batch(50))
	tg, _ := NewDirTarget(f.TempDir())
	clock := &fakeClock{}
	clock.set(t0.Add(24 * time.Hour))
	a, err := New(Options{Log: l, Target: tg, PollInterval: time.Millisecond, Now: clock.now})
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	for a.Stats().Partitions[0].Committed != 50 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	files, err := ListFiles(context.Background(), tg, t0.Add(-time.Hour), t0.Add(time.Hour))
	if err != nil || len(files) == 0 {
		f.Fatalf("no file to seed the corpus: %v", err)
	}
	good, _ := tg.Get(context.Background(), files[0].Key)
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte("PAR1PAR1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		mt := &memTarget{files: map[string][]byte{"x": b}}
		n := 0
		err := ReadFile(context.Background(), mt, "x", func(r *Row) error {
			n++
			_, _ = r.Event()
			return nil
		})
		if err == nil && n > len(b) {
			t.Fatalf("%d rows from %d bytes", n, len(b))
		}
	})
}
