package catalog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
)

// Partition ownership epochs
//
// Process nodes that share the log take turns on each partition (kafkalog.Membership hands
// them out). A node that lost a partition may not know yet, and keeps writing until it finds
// out, so every output of a partition is fenced by an epoch: the new owner claims the
// partition here first, which raises its epoch in one atomic statement, and writes with the
// new epoch; the stores refuse or discard writes of a lower epoch (metricstore.Commit.Epoch).
// The catalog database is where this lives because it is the one store every process of a
// deployment shares that has transactions; epochs are per consumer group, so several
// deployments, or stages fenced separately, can share the table.

// ClaimPartitions raises the epoch of each partition for group and returns the new epochs: the
// caller owns each partition at its epoch until someone claims it again.
func (c *Catalog) ClaimPartitions(ctx context.Context, group string, partitions []int32) (map[int32]uint64, error) {
	if group == "" || len(group) > 128 {
		return nil, errors.New("catalog: claim partitions: the group name must be 1-128 bytes")
	}
	parts := slices.Sorted(slices.Values(partitions)) // one lock order for every claimer
	out := make(map[int32]uint64, len(parts))
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("catalog: claim partitions: %w", err)
	}
	defer tx.Rollback()
	now := c.now().UnixMicro()
	for _, p := range parts {
		// UPDATE first: it takes the row lock, so two claimers of one partition are
		// serialised and each gets its own epoch. A partition never claimed has no row; the
		// INSERT of the first claim races only with another first claim, and the primary key
		// makes one of them fail (the caller retries the claim).
		res, err := tx.ExecContext(ctx, c.d.q("UPDATE partition_epochs SET epoch = epoch + 1, claimed_at = ? WHERE group_name = ? AND log_partition = ?"), now, group, p)
		if err != nil {
			return nil, fmt.Errorf("catalog: claim partition %d: %w", p, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return nil, fmt.Errorf("catalog: claim partition %d: %w", p, err)
		} else if n == 0 {
			if _, err := tx.ExecContext(ctx, c.d.q("INSERT INTO partition_epochs (group_name, log_partition, epoch, claimed_at) VALUES (?, ?, 1, ?)"), group, p, now); err != nil {
				return nil, fmt.Errorf("catalog: claim partition %d: %w", p, err)
			}
		}
		var epoch int64
		if err := tx.QueryRowContext(ctx, c.d.q("SELECT epoch FROM partition_epochs WHERE group_name = ? AND log_partition = ?"), group, p).Scan(&epoch); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				err = errors.New("claimed row not found")
			}
			return nil, fmt.Errorf("catalog: claim partition %d: %w", p, err)
		}
		out[p] = uint64(epoch)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("catalog: claim partitions: %w", err)
	}
	return out, nil
}

// DB returns the catalog's database and its dialect, for the other state a deployment keeps in
// its shared SQL database (the billing ledger).
func (c *Catalog) DB() (*sql.DB, Dialect) { return c.db, c.d.name }
