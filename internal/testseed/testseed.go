// Package testseed is the one seed convention of adpulse's randomized tests (model tests,
// crash tests, fuzz-like loops, the end-to-end tests of the binary): a test takes its seed
// from the ADPULSE_TEST_SEED environment variable, or from the clock when it is unset, logs
// it, and logs it again when the test fails. Any failure replays with
//
//	ADPULSE_TEST_SEED=N go test -run 'TestName' ./path/to/package
//
// An environment variable rather than a flag, so that `go test ./...` passes it to every
// package, including those that define no flag.
package testseed

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// Env is the environment variable that fixes the seed.
const Env = "ADPULSE_TEST_SEED"

// Seed returns t's seed and logs how to replay it.
func Seed(t testing.TB) uint64 {
	t.Helper()
	s := uint64(time.Now().UnixNano())
	if v := os.Getenv(Env); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: want an unsigned integer: %v", Env, v, err)
		}
		s = n
	}
	t.Logf("seed %d (replay with %s=%d)", s, Env, s)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("failed with seed %d: replay with %s=%d", s, Env, s)
		}
	})
	return s
}
