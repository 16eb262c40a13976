package ledger_test

import (
	"path/filepath"
	"testing"

	"github.com/adpulse/adpulse/internal/billing/ledger"
	"github.com/adpulse/adpulse/internal/billing/ledger/ledgertest"
	"github.com/adpulse/adpulse/internal/testseed"
)

func TestPebbleConformance(t *testing.T) {
	ledgertest.Run(t, func(t *testing.T) ledgertest.Opener {
		dir := filepath.Join(t.TempDir(), "billing")
		return func() (ledger.Store, error) { return ledger.OpenPebble(dir, ledger.PebbleOptions{}) }
	}, testseed.Seed(t))
}
