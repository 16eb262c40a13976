package barebase

import (
	"testing"

	"github.com/adpulse/adpulse/internal/tools/bench/baseline/baselinetest"
)

func TestConformance(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	baselinetest.Run(t, s, "bare")
}
