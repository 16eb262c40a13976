package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/adpulse/adpulse/internal/event"
	"github.com/adpulse/adpulse/internal/eventlog"
)

// Restorer receives the keys found in the log when the embedded dedup store is rebuilt.
type Restorer interface {
	Restore(key string, received time.Time)
}

// RestoreKeys rebuilds an in-process dedup store from the log: every event received within
// the window before now is read back and its key restored. Because the log is the only record
// of which keys were used, a crash can neither lose a reservation whose event is durable nor
// keep one whose event is not. It returns the number of events read.
func RestoreKeys(ctx context.Context, log eventlog.Log, into Restorer, window time.Duration, now time.Time, logger *slog.Logger) (int64, error) {
	from := now.Add(-window)
	offsets := make([]int64, log.Partitions())
	for p := range offsets {
		off, err := log.OffsetForTime(ctx, p, from)
		if err != nil {
			return 0, fmt.Errorf("restore keys: partition %d: %w", p, err)
		}
		offsets[p] = off
	}
	return restoreFrom(ctx, log, into, offsets, logger)
}

// restoreFrom restores the key of every event of each partition p from offsets[p] on.
func restoreFrom(ctx context.Context, log eventlog.Log, into Restorer, offsets []int64, logger *slog.Logger) (int64, error) {
	var n int64
	var ev event.Event
	lastReport := time.Now()
	for p, off := range offsets {
		for {
			msgs, err := log.Read(ctx, p, off, 4<<20)
			if err != nil {
				return n, fmt.Errorf("restore keys: read partition %d at %d: %w", p, off, err)
			}
			if len(msgs) == 0 {
				break
			}
			for _, m := range msgs {
				if err := ev.Decode(m.Value); err != nil {
					return n, fmt.Errorf("restore keys: partition %d offset %d: %w", p, m.Offset, err)
				}
				into.Restore(ev.Key(), time.UnixMicro(ev.RecvTime))
				n++
			}
			off = msgs[len(msgs)-1].Offset + 1
			if time.Since(lastReport) > 5*time.Second {
				logger.Info("restoring dedup keys", "partition", p, "offset", off, "events", n)
				lastReport = time.Now()
			}
		}
	}
	return n, nil
}
