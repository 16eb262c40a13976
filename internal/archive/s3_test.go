package archive

import (
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
	runUntil(t, a, 30*time.Second, caughtUp(l))
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
	runUntil(t, b, 30*time.Second, func(s Stats) bool { return caughtUp(l)(s) })
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
