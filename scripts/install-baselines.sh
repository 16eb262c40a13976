#!/usr/bin/env bash
# Installs and starts the two baselines `adpulse bench --baseline ...` compares adpulse with:
#
#   ClickHouse  Debian's clickhouse-server (18.16 on bookworm), started in the background with
#               its data under a temporary dir, native protocol on 127.0.0.1:19000 and HTTP on
#               127.0.0.1:18123 (non-standard ports, so nothing else on the machine collides).
#   Redis       127.0.0.1:6379; started (keeping nothing on disk) only if nothing answers there.
#
# Idempotent: a second run finds both running and only says so. Needs root (apt-get).
# Usage: scripts/install-baselines.sh [DATA_DIR]   (default: a new dir under /tmp)
# Stop ClickHouse afterwards with: kill "$(cat DATA_DIR/clickhouse.pid)"
set -euo pipefail

CH_TCP_PORT=${CH_TCP_PORT:-19000}
CH_HTTP_PORT=${CH_HTTP_PORT:-18123}
REDIS_PORT=${REDIS_PORT:-6379}

need_apt_update=1
apt_install() {
  if [ "$need_apt_update" = 1 ]; then
    apt-get update -qq
    need_apt_update=0
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- Redis -------------------------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "installing redis-server"
  apt_install redis-server redis-tools
fi
if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
  echo "redis: already answering on 127.0.0.1:$REDIS_PORT"
else
  echo "redis: starting on 127.0.0.1:$REDIS_PORT"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
  done
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping | grep -q PONG
fi

# --- ClickHouse --------------------------------------------------------------------------
ch_ping() { curl -fsS "http://127.0.0.1:$CH_HTTP_PORT/ping" 2>/dev/null | grep -q Ok; }

if ! command -v curl >/dev/null 2>&1; then
  apt_install curl
fi
if ! command -v clickhouse-server >/dev/null 2>&1; then
  echo "installing clickhouse-server (Debian's package)"
  apt_install clickhouse-server clickhouse-client
fi
if ch_ping; then
  echo "clickhouse: already answering on 127.0.0.1:$CH_HTTP_PORT (native 127.0.0.1:$CH_TCP_PORT)"
else
  dir=${1:-$(mktemp -d /tmp/adpulse-clickhouse-XXXXXX)}
  mkdir -p "$dir/tmp"
  # The Debian package runs as user clickhouse; we run it as whoever runs this script, so the
  # data dir must be ours.
  echo "clickhouse: starting, data in $dir"
  # listen_host is given on the command line too: only loopback.
  nohup clickhouse-server --config-file=/etc/clickhouse-server/config.xml -- \
    --path="$dir/" --tmp_path="$dir/tmp/" \
    --logger.log="$dir/log" --logger.errorlog="$dir/err" \
    --tcp_port="$CH_TCP_PORT" --http_port="$CH_HTTP_PORT" \
    --listen_host=127.0.0.1 >"$dir/stdout" 2>&1 &
  echo $! >"$dir/clickhouse.pid"
  for _ in $(seq 1 300); do
    ch_ping && break
    if ! kill -0 "$(cat "$dir/clickhouse.pid")" 2>/dev/null; then
      echo "clickhouse-server exited; its logs:" >&2
      tail -n 30 "$dir/stdout" "$dir/err" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
  ch_ping || { echo "clickhouse-server did not answer within 60s; see $dir/err" >&2; exit 1; }
  echo "clickhouse: pid $(cat "$dir/clickhouse.pid"); stop with: kill $(cat "$dir/clickhouse.pid")"
fi
echo "clickhouse: $(curl -fsS "http://127.0.0.1:$CH_HTTP_PORT/?query=SELECT%20version()")"

cat <<EOF

Baselines ready. Run the bench with both:
  adpulse bench --baseline clickhouse,redis --clickhouse-addr 127.0.0.1:$CH_TCP_PORT --redis-addr 127.0.0.1:$REDIS_PORT
Integration tests:
  ADPULSE_TEST_CLICKHOUSE_ADDR=127.0.0.1:$CH_TCP_PORT ADPULSE_TEST_REDIS_ADDR=127.0.0.1:$REDIS_PORT go test -race ./internal/tools/bench/...
EOF
