package client

import (
	"context"
	"time"
)

// SetSleep replaces the wait between attempts, so tests see the backoffs without taking them.
func SetSleep(c *Client, f func(ctx context.Context, d time.Duration) error) { c.sleep = f }
