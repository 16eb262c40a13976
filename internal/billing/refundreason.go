package billing

import (
	"context"
)

// RefundFor is Refund on behalf of a rule: the same idempotent credit, logged with why. The
// invalid-traffic stage credits back the clicks its behavioural rules flag through it
// (reason is the rule's name, such as "flood_ip"); the stage keeps the audit trail.
func (c *Charger) RefundFor(ctx context.Context, id, reason string) (Refund, error) {
	r, err := c.Refund(ctx, id)
	if err == nil && !r.AlreadyRefunded {
		c.opts.Logger.Info("billing: click refunded", "id", id, "campaign_id", r.CampaignID, "micros", r.RefundedMicros, "reason", reason)
	}
	return r, err
}
