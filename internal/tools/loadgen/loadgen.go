// Package loadgen is `adpulse loadgen`: it drives a running adpulse with realistic ad traffic
// and then proves the pipeline counted exactly what it acknowledged. It stands outside the
// pipeline, as a client on the internet and an ad server would, and talks to it only over
// the HTTP contract (API.md).
//
// Traffic: views of ads chosen by Zipf popularity, through impression pixels, click URLs,
// app clicks and /events batches, with add_to_cart and order interactions, double clicks,
// client retries, late and out-of-order batch lines and a share of crawler traffic, all
// drawn from one printed seed (gen.go). Load follows an open model: request i is due at
// start + i/rate and its latency counts from then, so a slow server cannot slow the load down
// and hide its own latency (coordinated omission); a closed model (rate 0) measures
// saturation instead. Latencies go into HDR histograms per request kind.
//
// Ground truth: the ledger (ledger.go) records, per idempotency key, whether any request
// carrying it was acknowledged, may have been recorded without an answer, and which minutes
// its event time can fall in. The check (check.go) waits for /metrics to catch up, then
// compares every touched ad, campaign and advertiser per minute, and /metrics/top, against
// those bounds.
//
// Invariants:
//   - An event is expected exactly once per acknowledged idempotency key, however many
//     times it was sent; keys whose requests got no answer widen the upper bound only, so
//     a check never fails for a timeout, and a lost or double-counted event always fails it.
//   - The sequence of requests depends only on the seed, the Model and the Layout; ids of a
//     run are made distinct from earlier runs by the run id, so runs can share a server.
//   - Run stops by itself: sending ends after Duration, each request after Timeout, the
//     check after CatchUpTimeout.
//   - Only loopback targets, unless Options.AllowRemote.
package loadgen
