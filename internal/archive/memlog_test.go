package archive

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
	"github.com/adpulse/adpulse/internal/eventlog/eventlogtest"
)

// memLog is the shared in-memory log of the stages' tests, with the helpers these tests use.
type memLog struct{ *eventlogtest.MemLog }

func newMemLog(partitions int) *memLog {
	return &memLog{eventlogtest.NewMemLog(partitions, nil)}
}

// all returns every retained message of every partition.
func (l *memLog) all() []eventlog.Message { return l.Messages() }

// appendEvents appends events to partition p.
func (l *memLog) appendEvents(p int, evs []event.Event) {
	msgs := make([]eventlog.Message, len(evs))
	for i := range evs {
		msgs[i] = eventlog.Message{Partition: int32(p), Value: evs[i].AppendBinary(nil)}
	}
	if err := l.Append(context.Background(), msgs); err != nil {
		panic(err)
	}
}

// gen makes a realistic mix of events: mostly impressions with user and catalog ids, some
// clicks (a few of them invalid), a few other interactions. Receive times advance by step on
// average and are out of order by up to a tenth of a second.
type gen struct {
	rng  *rand.Rand
	recv int64 // micros
	step time.Duration
}

const idChars = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

func (g *gen) randID(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = idChars[g.rng.IntN(len(idChars))]
	}
	return string(b)
}

func (g *gen) next() event.Event {
	g.recv += g.rng.Int64N(2*g.step.Microseconds() + 1)
	recv := g.recv
	if g.rng.IntN(20) == 0 {
		recv -= g.rng.Int64N(100_000)
	}
	ad := g.rng.IntN(500)
	e := event.Event{
		Type:         event.TypeImpression,
		Time:         recv - g.rng.Int64N(3_000_000),
		RecvTime:     recv,
		AdID:         fmt.Sprintf("ad-%04d", ad),
		CampaignID:   fmt.Sprintf("cmp-%03d", ad/8),
		AdvertiserID: fmt.Sprintf("adv-%02d", ad/40),
		ImpressionID: g.randID(22),
		UserID:       fmt.Sprintf("u-%07d", g.rng.IntN(2_000_000)),
		CatalogID:    fmt.Sprintf("sku-%06d", g.rng.IntN(50_000)),
	}
	switch r := g.rng.IntN(100); {
	case r < 8:
		e.Type, e.PriceMicros = event.TypeClick, 100_000+g.rng.Int64N(2_000_000)
	case r < 9:
		e.Type, e.Invalid = event.TypeClick, event.ReasonBot
	case r < 10:
		e.Type, e.Invalid, e.UserID = event.TypeClick, event.ReasonExpired, ""
	case r < 12:
		e.Type, e.Name, e.EventID = event.TypeInteraction, "add_to_cart", g.randID(16)
	case r < 13:
		e.Type, e.Name, e.EventID, e.CatalogID = event.TypeInteraction, "purchase", g.randID(16), ""
	default:
		if g.rng.IntN(10) == 0 {
			e.UserID = "" // no consent
		}
	}
	return e
}

func (g *gen) batch(n int) []event.Event {
	out := make([]event.Event, n)
	for i := range out {
		out[i] = g.next()
	}
	return out
}
