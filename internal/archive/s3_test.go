package archive

import (
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/adpulse/adpulse/internal/testseed"
)

// fakeS3 starts an in-memory S3 server on a 127.0.0.1 listener with bucket "archive".
func fakeS3(t *testing.T) S3Options {
	t.Helper()
	backend := s3mem.New()
	if err := backend.CreateBucket("archive"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	t.Cleanup(srv.Close)
	return S3Options{
		Endpoint:  strings.TrimPrefix(srv.URL, "http://"),
		Region:    "us-east-1",
		AccessKey: "test",
		SecretKey: "test-secret",
		Insecure:  true,
		PathStyle: true,
	}
}

func TestArchiveS3(t *testing.T) {
	seed := testseed.Seed(t)
	l := newMemLog(2)
	g := &gen{rng: rand.New(rand.NewPCG(seed, 3)), recv: t0.UnixMicro(), step: 500 * time.Millisecond}
	l.appendEvents(0, g.batch(1500))
	l.appendEvents(1, g.batch(1500))
	clock := &fakeClock{}
	clock.set(t0.Add(24 * time.Hour))
	a, err := New(Options{Log: l, Dest: "s3://archive/events/raw", S3: fakeS3(t), MaxFileEvents: 1000,
		PollInterval: time.Millisecond, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	runUntil(t, a, caughtUp(l))
	checkExactlyOnce(t, l, a.Target())
	s := a.Stats()
	if s.EventsArchived != 3000 || s.Errors != 0 {
		t.Errorf("stats %+v", s)
	}
	top := listAll(t, a.Target(), "")
	t.Logf("%s: %d keys, first %s", a.Target(), len(top), top[0])

	// A second archiver on the same prefix resumes from the checkpoints: nothing to do.
	b, err := New(Options{Log: l, Dest: "s3://archive/events/raw/", S3: a.opts.S3, PollInterval: time.Millisecond, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	runUntil(t, b, func(s Stats) bool { return caughtUp(l)(s) })
	if s := b.Stats(); s.FilesWritten != 0 {
		t.Errorf("resumed archiver wrote %d files", s.FilesWritten)
	}
}

func TestCrashS3(t *testing.T) {
	o := fakeS3(t)
	base, err := NewS3Target("archive", "raw", o)
	if err != nil {
		t.Fatal(err)
	}
	crashTest(t, base, func(k *killer) Target { return &faultTarget{Target: base, k: k} })
}

// TestGetAtMost: an object over the limit is refused with ErrTooLarge on the directory and
// S3 targets alike (both read at most one byte past the limit), one at the limit is read.
func TestGetAtMost(t *testing.T) {
	ctx := context.Background()
	dir, err := NewDirTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s3, err := NewS3Target("archive", "p/", fakeS3(t))
	if err != nil {
		t.Fatal(err)
	}
	for name, tg := range map[string]Target{"dir": dir, "s3": s3} {
		if err := tg.Put(ctx, "f/ten", []byte("0123456789")); err != nil {
			t.Fatal(err)
		}
		if b, err := GetAtMost(ctx, tg, "f/ten", 10); err != nil || string(b) != "0123456789" {
			t.Errorf("%s: at the limit: %q, %v", name, b, err)
		}
		if b, err := GetAtMost(ctx, tg, "f/ten", 9); !errors.Is(err, ErrTooLarge) || b != nil {
			t.Errorf("%s: over the limit: %q, %v; want ErrTooLarge", name, b, err)
		}
		if _, err := GetAtMost(ctx, tg, "f/none", 9); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: missing: %v; want fs.ErrNotExist", name, err)
		}
	}
}
