#!/usr/bin/env bash
# Regenerates internal/ivt/datacenter-ranges.txt, the embedded data-centre, cloud and crawler
# address ranges, from the providers' official feeds. Needs curl, python3 and network access.
# Run it, review the diff (a provider that changed its feed format fails loudly here rather
# than shipping an empty list), run the tests, commit.
#
#   scripts/update-ip-ranges.sh            # all sources
#   SKIP=azure scripts/update-ip-ranges.sh # keep going without a source (space-separated names)
set -euo pipefail
cd "$(dirname "$0")/.."
out=internal/ivt/datacenter-ranges.txt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
skip=" ${SKIP:-} "

fetch() { # name url
	if [[ $skip == *" $1 "* ]]; then
		echo "skipping $1" >&2
		return 0
	fi
	echo "fetching $1: $2" >&2
	curl -fsSL --retry 3 --max-time 120 -A "adpulse-update-ip-ranges" -o "$tmp/$1" "$2"
}

fetch aws https://ip-ranges.amazonaws.com/ip-ranges.json
fetch gcp https://www.gstatic.com/ipranges/cloud.json
fetch googlebot https://developers.google.com/static/search/apis/ipranges/googlebot.json
fetch google-special-crawlers https://developers.google.com/static/search/apis/ipranges/special-crawlers.json
fetch google-user-fetchers https://developers.google.com/static/search/apis/ipranges/user-triggered-fetchers.json
fetch bingbot https://www.bing.com/toolbox/bingbot.json
fetch oracle https://docs.oracle.com/en-us/iaas/tools/public_ip_ranges.json
fetch digitalocean https://digitalocean.com/geo/google.csv
# Hetzner and OVH publish no feed of their own: their networks are what their autonomous
# systems announce, as RIPE NCC's RIPEstat reports it.
fetch hetzner "https://stat.ripe.net/data/announced-prefixes/data.json?resource=AS24940"
fetch ovh "https://stat.ripe.net/data/announced-prefixes/data.json?resource=AS16276"
# Azure's Service Tags file moves every week; its current address is on the download page.
if [[ $skip != *" azure "* ]]; then
	page=$(curl -fsSL --retry 3 --max-time 60 "https://www.microsoft.com/en-us/download/details.aspx?id=56519")
	url=$(grep -Eo 'https://download\.microsoft\.com/download/[^"]*ServiceTags_Public_[0-9]+\.json' <<<"$page" | head -n1)
	if [[ -z $url ]]; then
		echo "azure: no ServiceTags_Public link on the download page; rerun with SKIP=azure to go on without it" >&2
		exit 1
	fi
	fetch azure "$url"
fi

python3 - "$tmp" "$out" <<'PY'
import csv, ipaddress, json, os, sys

tmp, out = sys.argv[1], sys.argv[2]

def load(name):
    p = os.path.join(tmp, name)
    if not os.path.exists(p):
        return None
    with open(p, encoding="utf-8") as f:
        return f.read()

def google(doc):  # cloud.json, googlebot.json and the other crawler lists share a format
    return [p.get("ipv4Prefix") or p.get("ipv6Prefix") for p in json.loads(doc)["prefixes"]]

parsers = {
    # EC2 only: the AMAZON service also covers CloudFront and other front ends that people
    # browse through.
    "aws": lambda d: [p["ip_prefix"] for p in json.loads(d)["prefixes"] if p["service"] == "EC2"]
    + [p["ipv6_prefix"] for p in json.loads(d)["ipv6_prefixes"] if p["service"] == "EC2"],
    "gcp": google,
    "googlebot": google,
    "google-special-crawlers": google,
    "google-user-fetchers": google,
    "bingbot": google,
    "azure": lambda d: next(v["properties"]["addressPrefixes"] for v in json.loads(d)["values"] if v["name"] == "AzureCloud"),
    "oracle": lambda d: [c["cidr"] for r in json.loads(d)["regions"] for c in r["cidrs"]],
    "digitalocean": lambda d: [row[0] for row in csv.reader(d.splitlines()) if row and not row[0].startswith("#")],
    "hetzner": lambda d: [p["prefix"] for p in json.loads(d)["data"]["prefixes"]],
    "ovh": lambda d: [p["prefix"] for p in json.loads(d)["data"]["prefixes"]],
}

# Never a person's browser on the internet (IANA special-purpose registries). Private,
# loopback, link-local and shared (100.64.0.0/10) space is left out on purpose: behind a proxy
# without --trusted-proxies that is every client's address.
special = """0.0.0.0/8 192.0.2.0/24 198.18.0.0/15 198.51.100.0/24 203.0.113.0/24 224.0.0.0/4
240.0.0.0/4 100::/64 2001:2::/48 2001:db8::/32 3fff::/20 ff00::/8""".split()

lines, counts = [], {}
for name, parse in parsers.items():
    doc = load(name)
    if doc is None:
        continue
    nets = set()
    for p in parse(doc):
        net = ipaddress.ip_network(p.strip(), strict=False)
        if net.is_private or net.is_loopback or net.is_link_local:
            continue  # no provider should publish these; never flag them
        nets.add(net)
    if not nets:
        sys.exit(f"{name}: no prefixes parsed; has the feed changed format?")
    # Collapse per source: fewer lines, same addresses.
    v4 = ipaddress.collapse_addresses(n for n in nets if n.version == 4)
    v6 = ipaddress.collapse_addresses(n for n in nets if n.version == 6)
    for n in list(v4) + list(v6):
        lines.append(f"{n} {name}")
    counts[name] = len(nets)

with open(out, "w", encoding="utf-8") as f:
    f.write("""# Data-centre, cloud and crawler address ranges, and special-purpose ranges that are never a
# person's browser. A click or impression from one of them is general invalid traffic
# (reason "datacenter"). Generated by scripts/update-ip-ranges.sh from the providers' feeds;
# edit the script, not this file.
#
# Format: one prefix per line, "PREFIX SOURCE", PREFIX in CIDR notation with no host bits set,
# SOURCE a short lower-case name of where it came from. '#' starts a comment.
#
# Deliberately absent: private, loopback, link-local and shared (100.64.0.0/10) space, and
# CDNs and privacy relays (Cloudflare, Akamai, Fastly, iCloud Private Relay, Google's
# goog.json), because people browse through them.

""")
    for p in special:
        f.write(f"{p} special\n")
    f.write("\n")
    f.write("\n".join(lines) + "\n")
for k, v in counts.items():
    print(f"{k}: {v} prefixes", file=sys.stderr)
PY
go test ./internal/ivt/
