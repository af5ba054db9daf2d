// The dashboard (/dashboard): live charts of jobs/s, queue depth, p50/p99 latency and workers
// per endpoint, a table per endpoint and one of the workers.
//
// It polls two sources every few seconds: /metrics, the same Prometheus text Prometheus scrapes
// (parsed here: counters, gauges and histogram buckets), so the page shows exactly what a
// scrape would; and /api/v1/status for the workers (their models and job counts). Rates and
// quantiles are worked out here from the change between polls, as Prometheus' rate() and
// histogram_quantile() do. Charts are drawn with uPlot (frontend/vendor/, a global `uPlot`).
//
// Query parameters: every=S (seconds between polls, default 2), minutes=M (history kept, 5).
// With `[SERVER] metrics_admin_only` the page asks for an admin key once and keeps it in this
// browser (jobhive.js's key store, under the name ":admin").

import {askKey, forgetKey, getKey} from "./jobhive.js";
import {el} from "./ui.js";

const params = new URLSearchParams(location.search);
const EVERY_MS = Math.max(250, 1000 * (Number(params.get("every")) || 2));
const HISTORY_MS = 60000 * (Number(params.get("minutes")) || 5);
const LATENCY_WINDOW_MS = Math.max(10000, 4 * EVERY_MS); // quantiles over this much history
const ADMIN = ":admin"; // the key store's name for the admin key (no endpoint has a colon)
const COLORS = ["#2457c5", "#c0262d", "#1c7c3c", "#9a6700", "#7b3fb5", "#0f7d8c", "#b5417b",
  "#5d6470"];
const CHARTS = ["jobs", "queued", "latency", "workers"];

const error = document.getElementById("error");
const serverLine = document.getElementById("server");
const history = []; // [{t (ms), endpoints: {name: Snapshot}}], oldest first
let charts = new Map(); // chart name -> uPlot
let chartEndpoints = ""; // the endpoints the charts were made for, joined

// ----- reading the sources

async function get(path) {
  const key = getKey(ADMIN);
  const response = await fetch(path, {
    cache: "no-store",
    headers: key ? {Authorization: `Bearer ${key}`} : {},
  });
  if ((response.status === 401 || response.status === 403) && path === "/metrics") {
    forgetKey(ADMIN);
    const message = key
      ? "The server refused this admin key for /metrics. Enter another."
      : "This server shows its metrics to an admin key only ([SERVER] admin_keys).";
    if (await askKey(ADMIN, {message})) return get(path);
  }
  if (!response.ok) throw new Error(`${path}: ${response.status} ${response.statusText}`);
  return path === "/metrics" ? response.text() : response.json();
}

/** The samples of Prometheus' text format: [{name, labels: {...}, value}]. */
export function parseMetrics(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    const match = raw.startsWith("#") ? null : line.exec(raw);
    if (!match) continue;
    const labels = {};
    for (const [, name, value] of (match[2] || "").matchAll(label)) {
      labels[name] = value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    samples.push({name: match[1], labels, value: Number(match[3])});
  }
  return samples;
}

/** Per endpoint: {finished, done, failed, canceled, refused, queued, running, workers, buckets}
 * (buckets: [[le, cumulative count]], +Inf last, of jobhive_job_latency_seconds). */
function snapshot(samples) {
  const endpoints = {};
  const of = (name) =>
    (endpoints[name] ??= {finished: 0, done: 0, failed: 0, canceled: 0, refused: 0, queued: 0,
      running: 0, workers: 0, buckets: new Map()});
  let server = "";
  for (const {name, labels, value} of samples) {
    if (!labels.endpoint) continue;
    const e = of(labels.endpoint);
    server ||= labels.server || "";
    if (name === "jobhive_jobs_finished_total") {
      e.finished += value;
      if (labels.outcome in e) e[labels.outcome] += value;
    } else if (name === "jobhive_submits_refused_total") {
      e.refused += value;
    } else if (name === "jobhive_jobs_queued") {
      e.queued = value;
    } else if (name === "jobhive_jobs_running") {
      e.running = value;
    } else if (name === "jobhive_workers_online") {
      e.workers = value;
    } else if (name === "jobhive_job_latency_seconds_bucket") {
      const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
      e.buckets.set(le, (e.buckets.get(le) || 0) + value);
    }
  }
  for (const e of Object.values(endpoints)) e.buckets = [...e.buckets].sort((a, b) => a[0] - b[0]);
  return {server, endpoints};
}

// ----- rates and quantiles, as Prometheus works them out

/** The q-quantile of cumulative buckets [[le, count]] (histogram_quantile's interpolation). */
export function quantile(q, buckets) {
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!(total > 0)) return null;
  const rank = q * total;
  let lowerLe = 0;
  let lowerCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Infinity) return lowerLe; // past the last bound: the highest one known
      return lowerLe + ((le - lowerLe) * (rank - lowerCount)) / Math.max(count - lowerCount, 1e-9);
    }
    lowerLe = le;
    lowerCount = count;
  }
  return lowerLe;
}

function bucketsSince(now, then) {
  const before = new Map(then?.buckets || []);
  const delta = now.buckets.map(([le, count]) => [le, count - (before.get(le) || 0)]);
  return delta.some(([, count]) => count < 0) ? now.buckets : delta; // (a restart: from 0)
}

/** The point of each chart at history[i]: {jobs, queued, p50, p99, workers} per endpoint. */
function pointAt(i, name) {
  const {t, endpoints} = history[i];
  const now = endpoints[name];
  if (!now) return null;
  const previous = i > 0 ? history[i - 1] : null;
  const before = previous?.endpoints[name];
  const dt = previous ? (t - previous.t) / 1000 : 0;
  const jobs = before && dt > 0 && now.finished >= before.finished
    ? (now.finished - before.finished) / dt : null;
  let j = i;
  while (j > 0 && t - history[j - 1].t <= LATENCY_WINDOW_MS) j--;
  const recent = j < i ? bucketsSince(now, history[j].endpoints[name]) : null;
  return {
    jobs,
    queued: now.queued,
    workers: now.workers,
    p50: recent && quantile(0.5, recent),
    p99: recent && quantile(0.99, recent),
  };
}

// ----- drawing

function color(i) {
  return COLORS[i % COLORS.length];
}

function axisStyle() {
  const style = getComputedStyle(document.documentElement);
  const fg = style.getPropertyValue("--muted").trim() || "#5d6470";
  const grid = style.getPropertyValue("--border").trim() || "#d9dbe0";
  return {stroke: fg, grid: {stroke: grid, width: 1}, ticks: {stroke: grid, width: 1}};
}

function makeCharts(names) {
  for (const chart of charts.values()) chart.destroy();
  charts = new Map();
  const axis = axisStyle();
  for (const chart of CHARTS) {
    const figure = document.querySelector(`[data-chart="${chart}"]`);
    const series = [{}];
    names.forEach((name, i) => {
      if (chart === "latency") {
        series.push({label: `${name} p50`, stroke: color(i), width: 2, spanGaps: true});
        series.push({label: `${name} p99`, stroke: color(i), width: 1.5, dash: [6, 4],
          spanGaps: true});
      } else {
        series.push({label: name, stroke: color(i), width: 2});
      }
    });
    const options = {
      width: figure.querySelector(".plot").clientWidth || 400,
      height: 220,
      series,
      scales: {x: {time: true}, y: {range: (u, min, max) => [0, Math.max(max, chart === "latency"
        ? 0.01 : 1)]}},
      axes: [{...axis}, {...axis, size: 56}],
      legend: {live: false},
      cursor: {drag: {x: false, y: false}},
    };
    const plot = figure.querySelector(".plot");
    plot.replaceChildren();
    charts.set(chart, new globalThis.uPlot(options, null, plot));
  }
  chartEndpoints = names.join("\n");
}

function draw(names) {
  if (names.join("\n") !== chartEndpoints) makeCharts(names);
  const times = history.map((h) => h.t / 1000);
  const points = history.map((_, i) => Object.fromEntries(names.map((n) => [n, pointAt(i, n)])));
  for (const [chart, plot] of charts) {
    const data = [times];
    for (const name of names) {
      const values = (key) => points.map((p) => p[name]?.[key] ?? null);
      if (chart === "latency") data.push(values("p50"), values("p99"));
      else data.push(values(chart));
    }
    plot.setData(data);
    const drawn = data.slice(1).reduce((n, s) => n + s.filter((v) => v !== null).length, 0);
    plot.root.closest("figure").dataset.points = String(drawn);
  }
  return points[points.length - 1] || {};
}

function number(value, digits = 2) {
  return value === null || value === undefined ? "–" : String(+value.toFixed(digits));
}

function drawEndpoints(names, latest) {
  // (an endpoint not charted has no points: its rates show as "–")
  const {endpoints} = history[history.length - 1];
  const rows = names.map((name) => {
    const e = endpoints[name];
    const p = latest[name] || {};
    const cells = [e.queued, e.running, e.workers, number(p.jobs), number(p.p50, 3),
      number(p.p99, 3), e.done, e.failed, e.canceled, e.refused];
    return el("tr", {"data-endpoint": name}, el("th", {scope: "row"}, name),
      ...cells.map((c) => el("td", {}, String(c))));
  });
  document.querySelector("#endpoints-table tbody").replaceChildren(...rows);
}

function drawWorkers(workers) {
  const rows = workers.map((w) => el(
    "tr", {"data-worker": w.worker_id},
    el("th", {scope: "row"}, w.worker_id),
    el("td", {}, w.job_types.join(", ")),
    el("td", {}, modelsOf(w.info)),
    el("td", {}, String(w.info?.device ?? w.info?.loaded_models?.[0]?.device ?? "–")),
    el("td", {}, String(w.jobs_done)),
    el("td", {}, String(w.jobs_failed)),
    el("td", {}, String(w.running)),
    el("td", {}, `${number(w.last_seen_s_ago, 1)} s ago`),
  ));
  if (!rows.length) rows.push(el("tr", {}, el("td", {colSpan: 8}, "No worker seen lately.")));
  document.querySelector("#workers-table tbody").replaceChildren(...rows);
}

/** A worker's models: those it says it loaded ("tiny-llama4 (random weights) · float32"), else
 * its older `model` string. */
function modelsOf(info) {
  const loaded = Array.isArray(info?.loaded_models) ? info.loaded_models : [];
  if (!loaded.length) return String(info?.model ?? "–");
  return loaded
    .map((m) => `${m.name}${m.random ? " (random weights)" : ""}${m.dtype ? ` · ${m.dtype}` : ""}`)
    .join(", ");
}

/** The endpoints with anything going on in the history (jobs, a queue, workers), else all:
 * a chart of twenty idle endpoints would hide the one at work. */
function charted(names) {
  const busy = (e) => e && (e.finished || e.queued || e.running || e.workers || e.refused);
  const active = names.filter((name) => history.some((h) => busy(h.endpoints[name])));
  return active.length ? active : names;
}

// ----- the loop

async function refresh() {
  const [text, status] = await Promise.all([get("/metrics"), get("/api/v1/status")]);
  const {server, endpoints} = snapshot(parseMetrics(text));
  const t = Date.now();
  history.push({t, endpoints});
  while (history.length && t - history[0].t > HISTORY_MS) history.shift();
  const names = Object.keys(endpoints).sort();
  const latest = draw(charted(names));
  drawEndpoints(names, latest);
  drawWorkers(status.workers || []);
  serverLine.textContent = `Server ${server || "?"}: rates and latency are this server's; ` +
    "queues and workers are the whole deployment's (shared with the servers on the same store).";
}

async function refreshForever() {
  for (;;) {
    if (!document.hidden) {
      try {
        await refresh();
        error.hidden = true;
      } catch (e) {
        error.textContent = `Cannot read the metrics: ${e.message}`;
        error.hidden = false;
      }
      document.querySelector("main").removeAttribute("aria-busy");
      document.body.dataset.refreshed = String(Date.now());
    }
    await new Promise((resolve) => setTimeout(resolve, EVERY_MS));
  }
}

let resizing = null;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(() => {
    for (const plot of charts.values()) {
      plot.setSize({width: plot.root.parentElement.clientWidth || 400, height: 220});
    }
  }, 100);
});

refreshForever();
