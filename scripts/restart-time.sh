#!/usr/bin/env bash
# Times one start of adpulse on an existing data dir: seconds from exec to /readyz 200, then
# kills it with SIGKILL, as a crash would, so the next start recovers the same way. Run it
# several times, alternating two binaries, to compare their restarts on one data dir (a
# large one: `adpulse bench --size full --scenarios queries,recovery --keep` leaves one).
#
# Usage: scripts/restart-time.sh BIN DATA_DIR [LOG]   (LOG: the server's output; default
# /dev/null). Uses ports 18080 (API) and 18081 (ops) on 127.0.0.1.
set -euo pipefail
bin=$1 dir=$2 log=${3:-/dev/null}
t0=$(date +%s.%N)
"$bin" serve --data-dir "$dir" --listen 127.0.0.1:18080 --ops-listen 127.0.0.1:18081 \
  --log-format text --rate-limit-ip 0 --rate-limit-key 0 >"$log" 2>&1 &
pid=$!
until curl -sf -o /dev/null http://127.0.0.1:18081/readyz; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "adpulse exited before it was ready" >&2
    exit 1
  fi
  sleep 0.01
done
t1=$(date +%s.%N)
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
echo "$t1 - $t0" | bc
