#!/usr/bin/env bash
# Refreshes the embedded bot/crawler user-agent patterns from the crawler-user-agents project
# (github.com/monperrus/crawler-user-agents, MIT), published on the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-latest}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "crawler-user-agents@$version" >/dev/null && tar xzf crawler-user-agents-*.tgz)
python3 - "$tmp/package/crawler-user-agents.json" internal/ivt/crawler-user-agents.json <<'PY'
import json, sys
pats = [x["pattern"] for x in json.load(open(sys.argv[1]))]
open(sys.argv[2], "w").write(json.dumps(pats, indent=0))
print(len(pats), "patterns")
PY
cp "$tmp/package/LICENSE" internal/ivt/crawler-user-agents.LICENSE
go test ./internal/ivt/
