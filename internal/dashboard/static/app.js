// adpulse dashboard: a plain ES module, no build step. Every number on a page comes from the
// adpulse API of the server that served this file, read with the key the user signed in
// with. The key lives in sessionStorage (this tab only) and is sent as the bearer header;
// fetches use cache: "no-store" so nothing read under one key is reused under another.

const KEY_STORAGE = "adpulse.key";
const LIVE_MS = 1000;
const HEALTH_MS = 2000;

// Per-page resources, released when the page changes: timers and charts.
let page = { timers: [], charts: [], gen: 0 };
// Who the key is, from GET /api/v1/campaigns: {role, advertiser_id, campaigns, truncated}.
let who = null;

// ---- small helpers ----

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const fmtInt = (n) => Number(n).toLocaleString("en-US");
const fmtMoney = (micros) => (Number(micros) / 1e6).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const fmtPct = (x) => (Number.isFinite(x) ? (100 * x).toFixed(2) + "%" : "–");
const ctr = (clicks, imps) => (imps > 0 ? clicks / imps : NaN);

class APIError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path) {
  const key = sessionStorage.getItem(KEY_STORAGE) || "";
  const resp = await fetch(path, {
    headers: { Authorization: "Bearer " + key, Accept: "application/json" },
    cache: "no-store",
    credentials: "omit",
  });
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  if (!resp.ok) {
    const e = body && body.error ? body.error : { code: "http_" + resp.status, message: resp.statusText };
    throw new APIError(resp.status, e.code, e.message);
  }
  return body;
}

function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") u.set(k, v);
  return u.toString();
}

function showError(err) {
  const box = document.getElementById("error");
  if (!err) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.hidden = false;
  box.textContent = err instanceof APIError ? `${err.message} (${err.code})` : String(err.message || err);
  if (err instanceof APIError && err.status === 401) signOut();
}

function every(ms, fn) {
  const gen = page.gen;
  let running = false;
  const tick = async () => {
    if (running || gen !== page.gen) return;
    running = true;
    try {
      await fn();
    } catch (e) {
      if (gen === page.gen) showError(e);
    } finally {
      running = false;
    }
  };
  tick();
  page.timers.push(setInterval(tick, ms));
}

function releasePage() {
  page.timers.forEach(clearInterval);
  page.charts.forEach((c) => c.destroy());
  page = { timers: [], charts: [], gen: page.gen + 1 };
}

// chart draws a uPlot line chart of xs (Unix seconds) and series [{label, values, color}],
// with the time axis shown in tz (an IANA name) when given.
function chart(container, title, xs, series, tz, xSpan) {
  if (!window.uPlot) return null;
  const width = Math.max(280, container.clientWidth || 600);
  const opts = {
    title,
    width,
    height: 220,
    series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2, points: { show: xs.length < 60 } }))],
    axes: [{}, { size: 60 }],
    legend: { live: false },
  };
  if (tz) opts.tzDate = (ts) => window.uPlot.tzDate(new Date(ts * 1e3), tz);
  // A live chart shows a fixed window ending at its newest sample, so its axis keeps a
  // readable scale from the first second.
  if (xSpan) opts.scales = { x: { time: true, range: (u, min, max) => [max - xSpan, max] } };
  const u = new window.uPlot(opts, [xs, ...series.map((s) => s.values)], container);
  container.uplot = u; // for the browser tests, which compare what is drawn with the API
  page.charts.push(u);
  return u;
}

// dataTable is the accessible twin of a chart: the same numbers as a table.
function dataTable(id, caption, headers, rows, attrs = {}) {
  return el("details", {},
    el("summary", { text: "Show the numbers as a table" }),
    el("div", { class: "table-wrap" },
      el("table", { id, ...attrs },
        el("caption", { text: caption }),
        el("thead", {}, el("tr", {}, headers.map((h, i) => el("th", { scope: "col", class: i ? "num" : "", text: h })))),
        el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c, i) => (i ? el("td", { class: "num", text: c }) : el("th", { scope: "row", text: c })))))))));
}

function card(label, value, id) {
  return el("div", { class: "card" }, el("div", { class: "label", text: label }), el("div", { class: "value", id, text: value }));
}

function heading(text) {
  const h = el("h1", { tabindex: "-1", text });
  return h;
}

function visibleCampaignIDs() {
  return who ? who.campaigns.map((c) => c.campaign_id) : [];
}

// ---- sign in ----

async function signIn(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
  try {
    who = await api("/api/v1/campaigns");
  } catch (e) {
    sessionStorage.removeItem(KEY_STORAGE);
    who = null;
    if (e instanceof APIError && e.status === 403) throw new Error("This key may not read analytics: sign in with the admin key or an advertiser key.");
    if (e instanceof APIError && e.status === 401) throw new Error("adpulse does not know this key.");
    throw e;
  }
}

function signOut() {
  sessionStorage.removeItem(KEY_STORAGE);
  who = null;
  releasePage();
  location.hash = "#/";
  render();
}

// ---- pages ----

async function overviewPage(root) {
  root.append(heading("Overview"));
  const ids = visibleCampaignIDs();
  if (ids.length === 0) {
    root.append(el("p", { text: "No campaigns yet." }));
    return;
  }
  root.append(
    el("div", { class: "cards" },
      card("Clicks per second (last 5 s)", "–", "live-rate"),
      card("Clicks this minute", "–", "live-minute"),
      card("Clicks, last 60 minutes", "–", "live-hour")),
    el("div", { class: "chart", id: "live-chart", role: "img", "aria-label": "Clicks per second over the last minute" }));
  const topBy = el("select", { id: "top-by" }, el("option", { value: "campaign", text: "campaign" }), el("option", { value: "ad", text: "ad" }));
  const topMetric = el("select", { id: "top-metric" },
    el("option", { value: "clicks", text: "clicks" }), el("option", { value: "impressions", text: "impressions" }), el("option", { value: "spend_micros", text: "spend" }));
  root.append(
    el("h2", { text: "Top 10, last 5 minutes (live)" }),
    el("form", { class: "controls", onsubmit: (e) => e.preventDefault() },
      el("div", {}, el("label", { for: "top-by", text: "Rank by" }), topBy),
      el("div", {}, el("label", { for: "top-metric", text: "Metric" }), topMetric)),
    el("div", { class: "table-wrap" },
      el("table", { id: "top-table" },
        el("caption", { class: "muted", id: "top-caption", text: "" }),
        el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "#" }), el("th", { scope: "col", text: "id" }), el("th", { scope: "col", class: "num", text: "value" }))),
        el("tbody", {}))));

  const samples = []; // [unix seconds, clicks/s]
  let prev = null; // minute start (unix s) -> clicks, as of the previous poll
  let prevAt = 0;
  const history = []; // [at ms, clicks since previous poll]
  let liveChart = null;
  const idList = ids.join(",");
  every(LIVE_MS, async () => {
    const now = Date.now();
    const end = Math.ceil(now / 1000);
    const m = await api("/metrics?" + qs({ campaign_ids: idList, interval: "1m", start_time: end - 3600, end_time: end }));
    const perMinute = new Map();
    for (const s of m.series) for (const p of s.points) {
      const t = Date.parse(p.time) / 1000;
      perMinute.set(t, (perMinute.get(t) || 0) + p.clicks);
    }
    let total = 0;
    let latest = 0;
    let latestT = 0;
    for (const [t, n] of perMinute) {
      total += n;
      if (t > latestT) { latestT = t; latest = n; }
    }
    if (prev) {
      let delta = 0;
      for (const [t, n] of perMinute) delta += n - (prev.get(t) || 0);
      history.push([now, Math.max(0, delta)]);
    }
    prev = perMinute;
    prevAt = now;
    while (history.length && history[0][0] < now - 5000) history.shift();
    const span = history.length ? Math.max(1, (now - Math.min(...history.map((h) => h[0])) + LIVE_MS) / 1000) : 1;
    const rate = history.reduce((a, h) => a + h[1], 0) / span;
    document.getElementById("live-rate").textContent = history.length ? rate.toFixed(1) : "–";
    document.getElementById("live-minute").textContent = fmtInt(latest);
    document.getElementById("live-hour").textContent = fmtInt(total);
    samples.push([Math.floor(prevAt / 1000), rate]);
    while (samples.length > 60) samples.shift();
    const data = [samples.map((s) => s[0]), samples.map((s) => s[1])];
    const box = document.getElementById("live-chart");
    if (!box) return;
    if (!liveChart) liveChart = chart(box, "Clicks per second, last minute", data[0], [{ label: "clicks/s", values: data[1], color: "#0b57d0" }], null, 60);
    else liveChart.setData(data);
  });
  every(LIVE_MS, async () => {
    const by = topBy.value;
    const metric = topMetric.value;
    const top = await api("/metrics/top?" + qs({ n: 10, minutes: 5, metric, by }));
    const body = document.querySelector("#top-table tbody");
    if (!body) return;
    document.getElementById("top-caption").textContent = `By ${by}, ${metric === "spend_micros" ? "spend" : metric}, ${new Date(top.start_time).toISOString().slice(11, 16)}–${new Date(top.end_time).toISOString().slice(11, 16)} UTC`;
    const rows = top.items.map((it, i) => {
      const id = it[by + "_id"];
      const v = it[metric];
      const link = by === "campaign" ? el("a", { href: "#/campaign/" + encodeURIComponent(id), text: id }) : id;
      return el("tr", { "data-id": id, "data-value": v }, el("td", { text: i + 1 }), el("td", {}, link), el("td", { class: "num", text: metric === "spend_micros" ? fmtMoney(v) : fmtInt(v) }));
    });
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: 3, class: "muted", text: "Nothing in the last 5 minutes." })));
    body.replaceChildren(...rows);
  });
}

async function campaignsPage(root) {
  root.append(heading("Campaigns"));
  who = await api("/api/v1/campaigns");
  if (who.truncated) root.append(el("p", { class: "muted", text: "Showing the first 1000 campaigns." }));
  root.append(el("div", { class: "table-wrap" }, el("table", { id: "campaigns-table" },
    el("caption", { class: "muted", text: who.role === "admin" ? "Every advertiser's campaigns" : `Campaigns of advertiser ${who.advertiser_id}` }),
    el("thead", {}, el("tr", {}, ["campaign", "advertiser", "status", "bid", "daily budget", "total budget"].map((h, i) => el("th", { scope: "col", class: i > 2 ? "num" : "", text: h })))),
    el("tbody", {}, who.campaigns.map((c) => el("tr", {},
      el("th", { scope: "row" }, el("a", { href: "#/campaign/" + encodeURIComponent(c.campaign_id), text: c.campaign_id })),
      el("td", { text: c.advertiser_id }),
      el("td", { text: c.status }),
      el("td", { class: "num", text: fmtMoney(c.cpc_bid_micros) }),
      el("td", { class: "num", text: c.daily_budget_micros ? fmtMoney(c.daily_budget_micros) : "unlimited" }),
      el("td", { class: "num", text: c.total_budget_micros ? fmtMoney(c.total_budget_micros) : "unlimited" })))))));
}

const RANGES = [["1h", 3600], ["6h", 6 * 3600], ["24h", 86400], ["7d", 7 * 86400], ["30d", 30 * 86400]];
const INTERVALS = ["1m", "5m", "15m", "1h", "1d"];

async function campaignPage(root, id) {
  root.append(heading("Campaign " + id));
  let c;
  try {
    c = await api("/api/v1/campaigns/" + encodeURIComponent(id));
  } catch (e) {
    if (e instanceof APIError && e.status === 404) {
      root.append(el("p", { id: "not-found", text: `There is no campaign ${id} that this key may see.` }));
      return;
    }
    throw e;
  }
  let tz = "UTC";
  try {
    tz = (await api("/api/v1/advertisers/" + encodeURIComponent(c.advertiser_id))).timezone || "UTC";
  } catch (e) {
    showError(e);
  }
  const statusClass = c.serving_status === "active" ? "status-active" : "status-bad";
  const b = c.budget || {};
  root.append(
    el("p", {}, `${c.name} · advertiser ${c.advertiser_id} · serving status `, el("span", { id: "serving-status", class: statusClass, text: c.serving_status })),
    el("div", { class: "cards" },
      card("Spent today (" + (b.day || "") + ")", fmtMoney(b.spent_today_micros || 0), "spent-today"),
      card("Daily budget", c.daily_budget_micros ? fmtMoney(c.daily_budget_micros) : "unlimited"),
      card("Spent in total", fmtMoney(b.spent_total_micros || 0), "spent-total"),
      card("Total budget", c.total_budget_micros ? fmtMoney(c.total_budget_micros) : "unlimited")));
  if (c.daily_budget_micros) root.append(el("label", { for: "meter-today", text: "Daily budget used" }), el("meter", { id: "meter-today", min: 0, max: c.daily_budget_micros, value: b.spent_today_micros || 0 }));
  if (c.total_budget_micros) root.append(el("label", { for: "meter-total", text: "Total budget used" }), el("meter", { id: "meter-total", min: 0, max: c.total_budget_micros, value: b.spent_total_micros || 0 }));

  // Performance over a chosen range, interval and time zone.
  const rangeSel = el("select", { id: "range", onchange: () => { custom.hidden = rangeSel.value !== "custom"; } },
    RANGES.map(([l, s]) => el("option", { value: s, text: "last " + l, selected: l === "24h" })),
    el("option", { value: "custom", text: "from … to …" }));
  const fromInput = el("input", { id: "from", type: "datetime-local" });
  const toInput = el("input", { id: "to", type: "datetime-local" });
  const custom = el("div", { class: "controls-custom", hidden: true },
    el("label", { for: "from", text: "From (UTC)" }), fromInput, el("label", { for: "to", text: "To (UTC)" }), toInput);
  const intervalSel = el("select", { id: "interval" }, INTERVALS.map((i) => el("option", { value: i, text: i, selected: i === "1h" })));
  const tzInput = el("input", { id: "tz", value: tz, spellcheck: "false", autocomplete: "off", "aria-describedby": "tz-help" });
  const perf = el("div", { id: "perf" });
  const form = el("form", { class: "controls", onsubmit: (e) => { e.preventDefault(); loadPerf(); } },
    el("div", {}, el("label", { for: "range", text: "Range" }), rangeSel, custom),
    el("div", {}, el("label", { for: "interval", text: "Interval" }), intervalSel),
    el("div", {}, el("label", { for: "tz", text: "Time zone" }), tzInput, el("div", { id: "tz-help", class: "muted", text: "IANA name; days (1d) start at its midnight" })),
    el("div", {}, el("button", { type: "submit", text: "Show" })));
  root.append(el("h2", { text: "Performance" }), form, perf);

  async function loadPerf() {
    showError(null);
    const end = Math.ceil(Date.now() / 1000);
    const zone = tzInput.value.trim() || "UTC";
    try {
      new Intl.DateTimeFormat("en-US", { timeZone: zone });
    } catch {
      showError(new Error(`Time zone: "${zone}" is not an IANA time zone name such as Europe/Berlin`));
      tzInput.focus();
      return;
    }
    const interval = intervalSel.value;
    const params = { campaign_ids: id, interval, start_time: end - Number(rangeSel.value), end_time: end };
    if (rangeSel.value === "custom") {
      const from = Date.parse(fromInput.value + ":00Z");
      const to = Date.parse(toInput.value + ":00Z");
      if (!Number.isFinite(from) || !Number.isFinite(to) || from >= to) {
        showError(new Error("Range: give a From time before the To time (UTC)"));
        fromInput.focus();
        return;
      }
      params.start_time = from / 1000;
      params.end_time = to / 1000;
    }
    if (interval === "1d") params.tz = zone;
    let m;
    try {
      m = await api("/metrics?" + qs(params));
    } catch (e) {
      showError(e);
      return;
    }
    page.charts.forEach((ch) => ch.destroy());
    page.charts = [];
    const pts = m.series[0].points;
    const xs = pts.map((p) => Date.parse(p.time) / 1000);
    let imps = 0, clicks = 0, spend = 0;
    for (const p of pts) { imps += p.impressions; clicks += p.clicks; spend += p.spend_micros; }
    const c1 = el("div", { class: "chart", id: "chart-volume", role: "img", "aria-label": "Impressions and clicks per interval" });
    const c2 = el("div", { class: "chart", id: "chart-spend", role: "img", "aria-label": "Spend per interval" });
    perf.replaceChildren(
      el("div", { class: "cards" },
        card("Impressions", fmtInt(imps), "total-impressions"), card("Clicks", fmtInt(clicks), "total-clicks"),
        card("CTR", fmtPct(ctr(clicks, imps)), "total-ctr"), card("Spend", fmtMoney(spend), "total-spend")),
      c1, c2,
      dataTable("perf-table", `Per ${m.interval} from ${m.start_time} to ${m.end_time}`, ["time (UTC)", "impressions", "clicks", "CTR", "spend"],
        pts.map((p) => [p.time, fmtInt(p.impressions), fmtInt(p.clicks), fmtPct(ctr(p.clicks, p.impressions)), fmtMoney(p.spend_micros)]),
        { "data-start": m.start_time, "data-end": m.end_time, "data-interval": m.interval, "data-tz": params.tz || "" }));
    chart(c1, "Impressions and clicks", xs, [
      { label: "impressions", values: pts.map((p) => p.impressions), color: "#5b6770" },
      { label: "clicks", values: pts.map((p) => p.clicks), color: "#0b57d0" }], zone);
    chart(c2, "Spend", xs, [{ label: "spend", values: pts.map((p) => p.spend_micros / 1e6), color: "#a04000" }], zone);
  }
  await loadPerf();

  // Pacing: today's cumulative spend against an even spread of the daily budget over the
  // advertiser's day; the serving feed's pacing share when the key may read the feed.
  root.append(el("h2", { text: "Pacing today" }));
  const pacing = el("div", { id: "pacing" });
  root.append(pacing);
  const now = Math.ceil(Date.now() / 1000);
  const day = await api("/metrics?" + qs({ campaign_ids: id, interval: "1d", tz, start_time: now - 1, end_time: now }));
  const dayStart = Date.parse(day.start_time) / 1000;
  const dayEnd = Date.parse(day.end_time) / 1000;
  const today = await api("/metrics?" + qs({ campaign_ids: id, interval: "15m", start_time: dayStart, end_time: Math.max(now, dayStart + 1) }));
  let cum = 0;
  const xs = [], actual = [], target = [];
  for (const p of today.series[0].points) {
    const t = Date.parse(p.time) / 1000 + 900;
    cum += p.spend_micros;
    xs.push(Math.min(t, now));
    actual.push(cum / 1e6);
    target.push(c.daily_budget_micros ? (c.daily_budget_micros * Math.min(1, (Math.min(t, now) - dayStart) / (dayEnd - dayStart))) / 1e6 : null);
  }
  let share = "available to the admin key";
  if (who && who.role === "admin") {
    const feed = await api("/api/v1/serving/campaigns");
    const entry = feed.campaigns.find((x) => x.campaign_id === id);
    share = entry ? entry.pacing.toFixed(3) : "not in the serving feed (" + c.serving_status + ")";
  }
  pacing.append(el("p", {}, `Day ${b.day || ""} in ${tz}. Serving feed pacing share: `, el("strong", { id: "pacing-share", text: share })));
  const pc = el("div", { class: "chart", role: "img", "aria-label": "Cumulative spend today against the even pace" });
  pacing.append(pc, dataTable("pacing-table", "Cumulative spend today", ["time (UTC)", "actual", "even pace"],
    xs.map((t, i) => [new Date(t * 1000).toISOString(), actual[i].toFixed(2), target[i] === null ? "–" : target[i].toFixed(2)])));
  const series = [{ label: "actual spend", values: actual, color: "#a04000" }];
  if (c.daily_budget_micros) series.push({ label: "even pace", values: target, color: "#5b6770" });
  chart(pc, "Cumulative spend vs even pace", xs, series, tz);

  // Ads of this campaign with activity in the last 24 hours.
  root.append(el("h2", { text: "Ads (last 24 hours)" }));
  const ads = el("div", { id: "campaign-ads" });
  root.append(ads);
  ads.append(await adsTable({ campaign_id: id }));
}

// adsTable lists the ads with impressions in the last 24 hours (the top-N index), with their
// impressions, clicks, CTR and spend over the same window.
async function adsTable(filter) {
  const top = await api("/metrics/top?" + qs({ n: 100, minutes: 1440, metric: "impressions", by: "ad", ...filter }));
  const ids = top.items.map((it) => it.ad_id);
  if (ids.length === 0) return el("p", { class: "muted", text: "No ad had impressions in the last 24 hours." });
  const m = await api("/metrics?" + qs({ ad_ids: ids.join(","), interval: "1h", start_time: top.start_time, end_time: top.end_time }));
  return el("div", { class: "table-wrap" }, el("table", { id: "ads-table" },
    el("caption", { class: "muted", text: `Top ${ids.length} ads by impressions, ${m.start_time} to ${m.end_time}` }),
    el("thead", {}, el("tr", {}, ["ad", "impressions", "clicks", "CTR", "spend"].map((h, i) => el("th", { scope: "col", class: i ? "num" : "", text: h })))),
    el("tbody", {}, m.series.map((s) => {
      let imps = 0, clicks = 0, spend = 0;
      for (const p of s.points) { imps += p.impressions; clicks += p.clicks; spend += p.spend_micros; }
      return el("tr", { "data-id": s.ad_id },
        el("th", { scope: "row", text: s.ad_id }), el("td", { class: "num", text: fmtInt(imps) }), el("td", { class: "num", text: fmtInt(clicks) }),
        el("td", { class: "num", text: fmtPct(ctr(clicks, imps)) }), el("td", { class: "num", text: fmtMoney(spend) }));
    }))));
}

async function adsPage(root) {
  root.append(heading("Ads"));
  root.append(await adsTable({}));
}

async function invalidPage(root) {
  root.append(heading("Invalid traffic"));
  const ids = visibleCampaignIDs();
  if (ids.length === 0) {
    root.append(el("p", { text: "No campaigns yet." }));
    return;
  }
  const end = Math.ceil(Date.now() / 1000);
  const m = await api("/metrics?" + qs({ campaign_ids: ids.join(","), interval: "1h", start_time: end - 86400, end_time: end }));
  const byReason = new Map();
  const perHour = new Map();
  let clicks = 0, invalid = 0;
  for (const s of m.series) for (const p of s.points) {
    clicks += p.clicks;
    invalid += p.invalid_clicks;
    const t = Date.parse(p.time) / 1000;
    perHour.set(t, (perHour.get(t) || 0) + p.invalid_clicks);
    for (const [r, n] of Object.entries(p.invalid_by_reason || {})) byReason.set(r, (byReason.get(r) || 0) + n);
  }
  root.append(el("div", { class: "cards" },
    card("Invalid clicks, 24 h", fmtInt(invalid), "invalid-total"),
    card("Valid clicks, 24 h", fmtInt(clicks), "valid-total"),
    card("Invalid share", fmtPct(clicks + invalid > 0 ? invalid / (clicks + invalid) : NaN))));
  const reasons = [...byReason.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const max = Math.max(1, ...reasons.map((r) => r[1]));
  root.append(el("h2", { text: "By reason" }), el("div", { class: "table-wrap" }, el("table", { id: "invalid-table" },
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "reason" }), el("th", { scope: "col", class: "num", text: "clicks" }), el("th", { scope: "col", text: "share" }))),
    el("tbody", {}, reasons.length === 0 ? el("tr", {}, el("td", { colspan: 3, class: "muted", text: "No invalid clicks in the last 24 hours." })) :
      reasons.map(([r, n]) => el("tr", { "data-reason": r, "data-value": n },
        el("th", { scope: "row", text: r }), el("td", { class: "num", text: fmtInt(n) }),
        el("td", { style: null }, el("div", { class: "bar", "data-width": Math.round((100 * n) / max) }))))))));
  // Widths through the CSSOM: the Content Security Policy forbids inline style attributes.
  root.querySelectorAll(".bar").forEach((b) => { b.style.width = b.dataset.width + "%"; });
  const xs = [...perHour.keys()].sort((a, b) => a - b);
  const box = el("div", { class: "chart", role: "img", "aria-label": "Invalid clicks per hour" });
  root.append(el("h2", { text: "Per hour" }), box);
  chart(box, "Invalid clicks per hour", xs, [{ label: "invalid clicks", values: xs.map((t) => perHour.get(t)), color: "#a50e0e" }]);
}

async function healthPage(root) {
  root.append(heading("Ingest health"));
  if (!who || who.role !== "admin") {
    root.append(el("p", { text: "Ingest health is shown to the admin key only." }));
    return;
  }
  const cards = el("div", { class: "cards" },
    card("Events accepted per second", "–", "h-rate"), card("Events accepted", "–", "h-accepted"),
    card("Duplicates dropped", "–", "h-dup"), card("Requests not recorded", "–", "h-fail"),
    card("Refused as too slow", "–", "h-slow"), card("Appends being resolved", "–", "h-maybe"),
    card("Counting lag (messages)", "–", "h-agg"), card("Charging lag (messages)", "–", "h-bill"),
    card("Watermark delay (s)", "–", "h-wm"), card("Log rollbacks", "–", "h-rb"));
  const reasons = el("tbody", {});
  root.append(cards, el("h2", { text: "Invalid clicks since start, by reason" }),
    el("div", { class: "table-wrap" }, el("table", { id: "health-invalid" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "reason" }), el("th", { scope: "col", class: "num", text: "clicks" }))), reasons)),
    el("p", { class: "muted", id: "h-time" }));
  let prev = null;
  const set = (id, v) => { const e = document.getElementById(id); if (e) e.textContent = v; };
  every(HEALTH_MS, async () => {
    const h = await api("/api/v1/health/ingest");
    const at = Date.parse(h.time);
    if (h.ingest) {
      if (prev && prev.ingest && at > prev.at) set("h-rate", ((h.ingest.events_accepted - prev.ingest.events_accepted) / ((at - prev.at) / 1000)).toFixed(1));
      set("h-accepted", fmtInt(h.ingest.events_accepted));
      set("h-dup", fmtInt(h.ingest.events_duplicate));
      set("h-fail", fmtInt(h.ingest.record_failures));
      set("h-slow", fmtInt(h.ingest.too_slow));
      set("h-maybe", fmtInt(h.ingest.unresolved_appends));
      reasons.replaceChildren(...Object.entries(h.ingest.invalid_clicks_by_reason).sort((a, b) => a[0].localeCompare(b[0]))
        .map(([r, n]) => el("tr", {}, el("th", { scope: "row", text: r }), el("td", { class: "num", text: fmtInt(n) }))));
    } else {
      set("h-rate", "this process does not ingest");
    }
    if (h.pipeline) {
      set("h-agg", fmtInt(h.pipeline.aggregate_lag_messages));
      set("h-bill", fmtInt(h.pipeline.billing_lag_messages));
      set("h-wm", h.pipeline.watermark_delay_seconds.toFixed(1));
      set("h-rb", fmtInt(h.pipeline.log_rollbacks));
    }
    set("h-time", "As of " + h.time + " (since this process started)");
    prev = { ...h, at };
  });
}

// ---- routing ----

const ROUTES = [
  [/^#?\/?$/, overviewPage, "#/"],
  [/^#\/campaigns$/, campaignsPage, "#/campaigns"],
  [/^#\/campaign\/(.+)$/, campaignPage, "#/campaigns"],
  [/^#\/ads$/, adsPage, "#/ads"],
  [/^#\/invalid$/, invalidPage, "#/invalid"],
  [/^#\/health$/, healthPage, "#/health"],
];

async function render() {
  releasePage();
  showError(null);
  const root = document.getElementById("page");
  root.replaceChildren();
  const signedIn = Boolean(sessionStorage.getItem(KEY_STORAGE));
  document.getElementById("signin").hidden = signedIn;
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("signout").hidden = !signedIn;
  if (!signedIn) {
    document.getElementById("who").textContent = "";
    document.querySelector("#signin h1").focus();
    return;
  }
  try {
    if (!who) who = await api("/api/v1/campaigns");
  } catch (e) {
    showError(e);
    return;
  }
  document.getElementById("who").textContent = who.role === "admin" ? "Signed in: admin" : "Signed in: advertiser " + who.advertiser_id;
  document.getElementById("nav-health").hidden = who.role !== "admin";
  const hash = location.hash || "#/";
  for (const [re, fn, nav] of ROUTES) {
    const m = hash.match(re);
    if (!m) continue;
    document.querySelectorAll("#nav a").forEach((a) => (a.getAttribute("href") === nav ? a.setAttribute("aria-current", "page") : a.removeAttribute("aria-current")));
    const gen = page.gen;
    document.body.dataset.state = "loading";
    try {
      await fn(root, ...m.slice(1).map(decodeURIComponent));
    } catch (e) {
      if (gen === page.gen) showError(e);
    }
    if (gen === page.gen) {
      document.body.dataset.state = "ready";
      const h = root.querySelector("h1");
      if (h) h.focus();
    }
    return;
  }
  root.append(heading("Not found"), el("p", {}, el("a", { href: "#/", text: "Back to the overview" })));
  document.body.dataset.state = "ready";
}

document.getElementById("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = document.getElementById("key");
  const key = input.value.trim();
  input.value = "";
  try {
    await signIn(key);
    showError(null);
    if (location.hash === "" || location.hash === "#/") render();
    else location.hash = "#/";
  } catch (err) {
    showError(err);
  }
});
document.getElementById("signout").addEventListener("click", signOut);
window.addEventListener("hashchange", render);
render();
