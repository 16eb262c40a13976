//go:build tools

// Package tools pins the dependencies adpulse's packages are being built on, so the module
// graph is complete while those packages land.
package tools

import (
	_ "github.com/ClickHouse/clickhouse-go/v2"
	_ "github.com/HdrHistogram/hdrhistogram-go"
	_ "github.com/cespare/xxhash/v2"
	_ "github.com/cockroachdb/pebble"
	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/redis/go-redis/v9"
	_ "github.com/twmb/franz-go/pkg/kadm"
	_ "github.com/twmb/franz-go/pkg/kfake"
	_ "github.com/twmb/franz-go/pkg/kgo"
	_ "github.com/valyala/fastjson"
	_ "modernc.org/sqlite"
)
