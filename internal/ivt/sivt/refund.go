package sivt

import (
	"context"
	"errors"

	"github.com/adpulse/adpulse/internal/billing"
	"github.com/adpulse/adpulse/internal/event"
)

// BillingRefunder credits clicks back through billing's public refund.
func BillingRefunder(c *billing.Charger) Refunder { return billingRefunder{c} }

type billingRefunder struct{ c *billing.Charger }

func (b billingRefunder) Refund(ctx context.Context, id string, reason event.Reason) (RefundResult, error) {
	r, err := b.c.RefundFor(ctx, id, reason.String())
	if errors.Is(err, billing.ErrNotFound) {
		return RefundResult{}, ErrNotCharged
	}
	if err != nil {
		return RefundResult{}, err
	}
	if r.AlreadyRefunded {
		// Refunded before: by this stage before a crash let it record so, or by an operator.
		// The trail shows the click's charge and says it was already refunded.
		return RefundResult{RefundedMicros: r.ChargedMicros, AlreadyRefunded: true}, nil
	}
	return RefundResult{RefundedMicros: r.RefundedMicros}, nil
}
