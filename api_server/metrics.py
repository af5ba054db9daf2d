"""Prometheus metrics of one server: `Metrics` holds its own registry (never the library's
global one, so two apps in one process never meet), counts what this server sees, and writes
the text `GET /metrics` serves.

Where each number comes from:

- the job store tells it of jobs submitted, finished, requeued and leases expired, as they
  happen (it is the store's `JobEvents`: `Store.observe`); a finished job's queue wait, run
  and end-to-end times feed the histograms;
- the app's edge (`api_edge`, the one middleware) hands it every response, counted by route
  template (`/api/v1/jobs/{job_id}`, never the raw path), method and status, and the refused
  submits of an endpoint (the submit routes mark the request with `SUBMITTING`);
- the worker result routes hand it each accepted result's outputs, from which it reads what
  model workers measure themselves (time to first token, tokens/s, images/s);
- the queue gauges (queued, running, workers online) are read from the store at scrape time
  (`Store.stats`), so several servers on one Redis all export the same shared numbers.

Counters and histograms carry a `server` label (`[SERVER] server_name`): with several servers
each counts its own, and a sum over servers is the deployment's. The queue gauges carry none
(every server reads the same shared queue: take their max, not their sum).

The per-event cost is what bench/queue.py and bench/instructions.py see in every job, so the
counts are plain numbers in dicts (`CounterFamily`, `HistogramFamily`: an addition, or a bisect
and two), turned into prometheus_client's metric families only when scraped; the calls made for
every job (`job_finished`, `responded`) update them inline. (The library's Counter and
Histogram take a lock, a label look-up and checks per event: several times the cost; a Python
call costs about a thousand instructions.) Counting and scraping both run on the event loop, so
a scrape sees whole events.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from api_server.config import Endpoint
from jobhive.protocol import JobStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text format

# Histogram buckets, in seconds (or per second). Jobs run from milliseconds (echo) to minutes
# (a large image batch), so the time buckets span both.
TIME_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                  120.0, 300.0, 600.0, 1800.0, 3600.0)
FIRST_TOKEN_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKENS_PER_S_BUCKETS = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)
IMAGES_PER_S_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0)

REFUSALS = frozenset({400, 413, 429, 503, 507})  # a submit refused: input, size, full, store
OUTCOMES = ("done", "failed", "canceled")
REQUEUE_REASONS = ("lease_expired", "handed_back")
# The outputs model workers measure themselves (llama4's, sd3's): read by `result_taken`.
MODEL_OUTPUTS = frozenset({"time_to_first_token_s", "tokens_per_s", "generated_tokens", "timing"})
UNMATCHED_ROUTE = "unmatched"  # the route label of requests no route matched (404, 405)

SUBMITTING = web.RequestKey("submitting", str)  # the endpoint a submit request is for
_DONE = JobStatus.DONE  # (a module constant: an enum member's look-up is a Python call)


class Metrics:
    """The metrics of one server (one app).

    Args:
        server (str): this server's name, the `server` label of its counters.
        endpoints (Mapping[str, Endpoint]): the endpoints; their series exist from the start
            (at 0), so that a rate over the first scrapes is right.
    """

    def __init__(self, server: str, endpoints: Mapping[str, Endpoint]) -> None:
        self.server = server
        self._endpoints = endpoints
        self.registry = CollectorRegistry()
        counter, histogram = self._counter, self._histogram
        self._submitted = counter("jobhive_jobs_submitted", "Jobs queued (a repeated job_id "
                                  "is not counted again).")
        self._finished = counter("jobhive_jobs_finished", "Jobs that ended, by outcome (done, "
                                 "failed, canceled).", "outcome")
        self._refused = counter("jobhive_submits_refused", "Submits refused, by HTTP status "
                                "(400 bad input, 413 too large, 429 queue full or rate limit, "
                                "503/507 store cannot write).", "status")
        self._expired = counter("jobhive_lease_expiries", "Leases that expired: a worker "
                                "stopped reporting (the job was requeued, or failed at "
                                "max_attempts).")
        self._requeued = counter("jobhive_jobs_requeued", "Running jobs put back in their "
                                 "queue, by reason (lease_expired, handed_back).", "reason")
        self._wait = histogram("jobhive_job_queue_wait_seconds", "Done jobs: from submit to "
                               "the start of their last attempt.", TIME_BUCKETS_S)
        self._run = histogram("jobhive_job_run_seconds", "Done jobs: from the start of their "
                              "last attempt to their result.", TIME_BUCKETS_S)
        self._latency = histogram("jobhive_job_latency_seconds", "Done jobs: from submit to "
                                  "result (end to end).", TIME_BUCKETS_S)
        self._first_token = histogram("jobhive_time_to_first_token_seconds", "Chat jobs: the "
                                      "worker's time to the first token.", FIRST_TOKEN_BUCKETS_S)
        self._tokens_per_s = histogram("jobhive_tokens_per_second", "Chat jobs: tokens per "
                                       "second of one reply, as the worker measured it.",
                                       TOKENS_PER_S_BUCKETS)
        self._tokens = counter("jobhive_generated_tokens", "Chat jobs: tokens generated.")
        self._images_per_s = histogram("jobhive_images_per_second", "Image jobs: images per "
                                       "second of the batch that made them, as the worker "
                                       "measured it.", IMAGES_PER_S_BUCKETS)
        self._images = counter("jobhive_images_generated", "Image jobs: images made.")
        self._responses = ResponseCounter(server)
        self.registry.register(self._responses)
        # Per endpoint, the counts of the three histograms every done job feeds.
        self._done_series: dict[str, tuple[list[float], list[float], list[float]]] = {}
        for name in endpoints:
            self._start_series(name)

    def _counter(self, name: str, text: str, label: str = "") -> CounterFamily:
        family = CounterFamily(name, text, self.server, label)
        self.registry.register(family)
        return family

    def _histogram(self, name: str, text: str, buckets: tuple[float, ...]) -> HistogramFamily:
        family = HistogramFamily(name, text, self.server, buckets)
        self.registry.register(family)
        return family

    def _start_series(self, endpoint: str) -> None:
        self._submitted.start(endpoint)
        self._expired.start(endpoint)
        for outcome in OUTCOMES:
            self._finished.start(endpoint, outcome)
        for status in REFUSALS:
            self._refused.start(endpoint, status)
        for reason in REQUEUE_REASONS:
            self._requeued.start(endpoint, reason)
        self._done_series[endpoint] = (self._wait.series(endpoint), self._run.series(endpoint),
                                       self._latency.series(endpoint))

    # ----- what the job store tells (api_server.store.base.JobEvents)

    def job_submitted(self, endpoint: str) -> None:
        counts, key = self._submitted.counts, (endpoint, "")
        counts[key] = counts.get(key, 0) + 1

    def job_finished(
        self, endpoint: str, status: JobStatus, wait_s: float | None, run_s: float | None
    ) -> None:
        """A job ended; a done job's times (when the store knows them) feed the histograms
        (inline: this runs for every job)."""
        counts, key = self._finished.counts, (endpoint, status._value_)  # (an enum's hash is
        counts[key] = counts.get(key, 0) + 1  # a Python call; its value's is not)
        if wait_s is None or run_s is None or status is not _DONE:
            return
        if (series := self._done_series.get(endpoint)) is None:  # (a removed endpoint's job)
            self._start_series(endpoint)
            series = self._done_series[endpoint]
        wait, run, latency = series
        wait_s = wait_s if wait_s > 0 else 0.0  # (two servers' clocks; not max(): a call)
        run_s = run_s if run_s > 0 else 0.0
        wait[bisect_left(TIME_BUCKETS_S, wait_s)] += 1  # (the first bucket with le >= value)
        wait[-1] += wait_s
        run[bisect_left(TIME_BUCKETS_S, run_s)] += 1
        run[-1] += run_s
        latency[bisect_left(TIME_BUCKETS_S, wait_s + run_s)] += 1
        latency[-1] += wait_s + run_s

    def lease_expired(self, endpoint: str, requeued: bool) -> None:
        self._expired.inc((endpoint, ""))
        if requeued:
            self._requeued.inc((endpoint, "lease_expired"))

    def job_handed_back(self, endpoint: str) -> None:
        self._requeued.inc((endpoint, "handed_back"))

    # ----- what the routes tell

    def result_taken(self, endpoint: str, outputs: Mapping[str, Any]) -> None:
        """A worker's result was accepted: what model workers measure themselves (llama4's
        time_to_first_token_s, tokens_per_s and generated_tokens; sd3's timing and images)."""
        if MODEL_OUTPUTS.isdisjoint(outputs):  # (most results: one look, no more)
            return
        if _positive(first := outputs.get("time_to_first_token_s"), zero=True):
            self._first_token.observe(endpoint, first)
        if _positive(rate := outputs.get("tokens_per_s")):
            self._tokens_per_s.observe(endpoint, rate)
        if _positive(tokens := outputs.get("generated_tokens"), zero=True):
            self._tokens.inc((endpoint, ""), tokens)
        timing = outputs.get("timing")
        if isinstance(timing, dict):
            made, seconds = timing.get("batch_images"), timing.get("generate_s")
            if _positive(made) and _positive(seconds):
                self._images_per_s.observe(endpoint, made / seconds)
            if isinstance(images := outputs.get("images"), list):
                self._images.inc((endpoint, ""), len(images))

    def responded(self, request: web.Request, response: web.StreamResponse) -> None:
        """Counts a response by its route and status, and a refused submit by its endpoint
        (inline: this runs for every request)."""
        status, route = response.status, request.match_info.route
        key = (route if route.resource is not None else None, status)  # (unmatched: a new
        counts = self._responses.counts  # SystemRoute each time, never a key)
        counts[key] = counts.get(key, 0) + 1
        if status in REFUSALS and (endpoint := request.get(SUBMITTING)) is not None:
            self._refused.inc((endpoint, status))

    # ----- the scrape

    def exposition(self, stats: Mapping[str, Any]) -> bytes:
        """The text `GET /metrics` serves: this server's counters and histograms, and the
        queue gauges of `stats` (`Store.stats()`, read just before)."""
        return generate_latest(_Scrape(self, stats))  # type: ignore[arg-type]

    def queue_gauges(self, stats: Mapping[str, Any]) -> Iterator[Metric]:
        """The gauges of the shared queue, per endpoint (no server label)."""
        gauges = {
            "queued": GaugeMetricFamily("jobhive_jobs_queued", "Jobs waiting in the queue.",
                                        labels=["endpoint"]),
            "running": GaugeMetricFamily("jobhive_jobs_running", "Jobs a worker is running.",
                                         labels=["endpoint"]),
            "queued_bytes": GaugeMetricFamily("jobhive_queued_input_bytes", "Bytes of the "
                                              "queued jobs' inputs.", labels=["endpoint"]),
            "workers": GaugeMetricFamily("jobhive_workers_online", "Workers polling for the "
                                         "endpoint's job type.", labels=["endpoint"]),
        }
        limit = GaugeMetricFamily("jobhive_queue_limit_jobs", "The endpoint's "
                                  "max_queue_length: submits past it get 429.",
                                  labels=["endpoint"])
        for name, numbers in stats.get("endpoints", {}).items():
            for key, gauge in gauges.items():
                gauge.add_metric([name], numbers.get(key, 0))
            if (endpoint := self._endpoints.get(name)) is not None:
                limit.add_metric([name], endpoint.endpoint.max_queue_length)
        seen = GaugeMetricFamily("jobhive_workers_seen", "Workers seen lately (within "
                                 "worker_seen_ttl_s), whatever they serve.")
        seen.add_metric([], len(stats.get("workers", ())))
        yield from (*gauges.values(), limit, seen)


class CounterFamily:
    """A counter per endpoint (and, given `label`, per value of it) for one server, kept as
    plain numbers; a collector of the registry, read when scraped.

    Args:
        name (str): the counter's name (`_total` is added).
        documentation (str): its help text.
        server (str): the `server` label.
        label (str): a second label beside `endpoint` ("outcome", "status"...), or "".
    """

    def __init__(self, name: str, documentation: str, server: str, label: str = "") -> None:
        self._name, self._documentation, self._server = name, documentation, server
        self._labels = ["server", "endpoint", *([label] if label else [])]
        self.counts: dict[tuple[str, Any], float] = {}  # (endpoint, label value or "")

    def start(self, endpoint: str, value: Any = "") -> None:
        """Makes the series exist at 0 (a rate over its first scrapes is then right)."""
        self.counts.setdefault((endpoint, value), 0)

    def inc(self, key: tuple[str, Any], amount: float = 1) -> None:
        """Adds to the series of key, (endpoint, label value or "")."""
        self.counts[key] = self.counts.get(key, 0) + amount

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, labels=self._labels)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for (endpoint, value), count in self.counts.items():
            labels = [self._server, endpoint, *([str(value)] if len(self._labels) > 2 else [])]
            family.add_metric(labels, count)
        yield family


class HistogramFamily:
    """A histogram per endpoint for one server, kept as plain counts per bucket: `observe` is a
    bisect and two additions; a collector of the registry, which writes the cumulative buckets
    Prometheus reads.

    Args:
        name (str): the histogram's name (`..._seconds`).
        documentation (str): its help text.
        server (str): the `server` label.
        buckets (tuple[float, ...]): the upper bounds, ascending (+Inf is added).
    """

    def __init__(self, name: str, documentation: str, server: str,
                 buckets: tuple[float, ...]) -> None:
        self._name, self._documentation, self._server = name, documentation, server
        self._bounds = buckets
        self._les = [*map(floatToGoString, buckets), "+Inf"]
        self._series: dict[str, list[float]] = {}  # endpoint -> [count per bucket..., sum]

    def series(self, endpoint: str) -> list[float]:
        """The endpoint's counts (one per bucket, +Inf last) and their sum; made at 0."""
        series = self._series.get(endpoint)
        if series is None:
            series = self._series[endpoint] = [0] * (len(self._bounds) + 2)
        return series

    def observe(self, endpoint: str, value: float) -> None:
        series = self.series(endpoint)
        series[bisect_left(self._bounds, value)] += 1  # (the first bucket with le >= value)
        series[-1] += value

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation,
                                    labels=["server", "endpoint"])

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation,
                                       labels=["server", "endpoint"])
        for endpoint, series in self._series.items():
            cumulative, total = [], 0.0
            for le, count in zip(self._les, series, strict=False):  # (the sum stays out)
                total += count
                cumulative.append((le, total))
            family.add_metric([self._server, endpoint], cumulative, series[-1])
        yield family


class ResponseCounter:
    """`jobhive_http_requests_total`: responses by route and status. Counted (by
    `Metrics.responded`) per aiohttp route object (one per method and resource, hashed by
    identity: the cheapest key there is), named by its method and template only when scraped;
    requests no route matched count together, under None.

    Args:
        server (str): the `server` label.
    """

    NAME = "jobhive_http_requests"
    LABELS = ("server", "method", "route", "status")
    DOCUMENTATION = "HTTP responses, by method, route template and status."

    def __init__(self, server: str) -> None:
        self._server = server
        self.counts: dict[tuple[Any, int], int] = {}  # (route or None, status)

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.NAME, self.DOCUMENTATION, labels=self.LABELS)

    def collect(self) -> Iterator[Metric]:
        named: dict[tuple[str, str, str], int] = {}
        for (route, status), count in self.counts.items():
            if route is None:
                key = ("any", UNMATCHED_ROUTE, str(status))
            else:
                key = (route.method, route.resource.canonical, str(status))
            named[key] = named.get(key, 0) + count
        family = CounterMetricFamily(self.NAME, self.DOCUMENTATION, labels=self.LABELS)
        for labels, count in named.items():
            family.add_metric([self._server, *labels], count)
        yield family


class _Scrape:
    """What generate_latest reads: the registry's metrics, then the queue gauges."""

    def __init__(self, metrics: Metrics, stats: Mapping[str, Any]) -> None:
        self._metrics = metrics
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from self._metrics.registry.collect()
        yield from self._metrics.queue_gauges(self._stats)


def _positive(value: Any, zero: bool = False) -> bool:
    """Whether a worker's value is a finite number above 0 (or 0 itself, with zero)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 or (zero and value == 0))
    )
