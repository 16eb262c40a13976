#!/usr/bin/env bash
# Fetches uPlot (the dashboard's charting library) from npm and vendors its minified build
# into internal/dashboard/static/vendor, with its licence and the version it came from.
# The dashboard then never loads anything from outside the adpulse server.
# Usage: scripts/update-uplot.sh [VERSION]   (default: the version recorded in UPLOT_VERSION)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=internal/dashboard/static/vendor
version=${1:-$(sed -n 's/^version=//p' "$dest/UPLOT_VERSION" 2>/dev/null || true)}
version=${version:-1.6.32}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "uplot@$version" >/dev/null)
tar -xzf "$tmp"/uplot-"$version".tgz -C "$tmp"
mkdir -p "$dest"
cp "$tmp/package/dist/uPlot.iife.min.js" "$dest/uPlot.iife.min.js"
cp "$tmp/package/dist/uPlot.min.css" "$dest/uPlot.min.css"
cp "$tmp/package/LICENSE" "$dest/UPLOT_LICENSE"
license=$(node -e 'console.log(require(process.argv[1]).license)' "$tmp/package/package.json")
{
  echo "# uPlot, vendored by scripts/update-uplot.sh from the npm registry"
  echo "version=$version"
  echo "license=$license"
  echo "sha256_js=$(sha256sum "$dest/uPlot.iife.min.js" | cut -d' ' -f1)"
  echo "sha256_css=$(sha256sum "$dest/uPlot.min.css" | cut -d' ' -f1)"
} > "$dest/UPLOT_VERSION"
echo "uPlot $version ($license) vendored into $dest"
