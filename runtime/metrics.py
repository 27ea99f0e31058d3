"""Prometheus metrics, defined once for every process (web servers and long-running commands).

Web servers run under gunicorn with several worker processes, so their metrics use
prometheus_client's multiprocess mode: gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a
directory of its own, every worker writes its samples there, and /metrics (any worker) adds
them up. Long-running commands are single processes and serve their own registry on their own
port (--metrics-port); see docs/metrics.md for the ports and a scrape configuration.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from functools import wraps
from typing import TYPE_CHECKING

from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

if TYPE_CHECKING:
    from topics.records import Rejected

logger = logging.getLogger(__name__)

# Latency buckets for requests answered from memory in about a millisecond, up to slow outliers.
REQUEST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Histogram(
    "shortener_request_duration_seconds",
    "Time to answer a request; its _count gives the request rate. endpoint is create or "
    "redirect; status splits redirects into found (302) and not found (404).",
    ["endpoint", "method", "status"],
    buckets=REQUEST_BUCKETS,
)

# --- consumers (consume_links, consume_clicks) ----------------------------------------------

CONSUMER_RECORDS = Counter(
    "shortener_consumer_records_total",
    "Records a consumer handled, by outcome: applied, skipped (malformed), unknown (clicks for "
    "a link the master does not have); links only: stale (not newer than the version held), "
    "ignored (tombstones, links past their keep time).",
    ["topic", "outcome"],
)
CONSUMER_RETRIES = Counter(
    "shortener_consumer_retries_total",
    "Times a consumer had to retry: Kafka or its store unavailable, or its store's position "
    "differed (store wiped).",
    ["topic", "reason"],
)
CONSUMER_BATCH_SECONDS = Histogram(
    "shortener_consumer_batch_seconds",
    "Time to apply one batch (one store transaction).",
    ["topic"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CONSUMER_LAG = Gauge(
    "shortener_consumer_lag",
    "Records in the partition after the consumer's position (end offset - position).",
    ["topic", "partition"],
)
RECORDS_REJECTED = Counter(
    "shortener_records_rejected_total",
    "Records a consumer could not use (consume_links, consume_clicks, the master's links audit, "
    "the admin's replicas page): each is logged once with topic, partition, offset and reason, "
    "and skipped. reason: topics.records.REJECT_REASONS (json, schema, key, "
    "missing, type, range, reserved, longurl, state, invalid).",
    ["topic", "reason"],
)


def records_rejected_report(rejected: Iterable[Rejected], *, log: logging.Logger) -> None:
    """Log each rejected record once (WARNING: topic, partition, offset, reason, what is wrong)
    and count it in shortener_records_rejected_total{topic,reason}. Called once the position
    has moved past the records, so a batch that is retried reports them once."""
    for r in rejected:
        log.warning("rejected record topic=%s partition=%s offset=%s reason=%s: %s",
                    r.topic, r.partition, r.offset, r.reason, r.error)
        RECORDS_REJECTED.labels(r.topic, r.reason).inc()


CONSUMER_OUT_OF_RANGE = Counter(
    "shortener_consumer_out_of_range_total",
    "Times a consumer found its stored position outside the partition's retained range "
    "(records deleted before it read them, or the topic recreated); each is also an ERROR log.",
    ["topic"],
)
CONSUMER_RECORDS_LOST = Counter(
    "shortener_consumer_records_lost_total",
    "Records deleted from a topic before its consumer read them (the partition's first retained "
    "offset minus the consumer's stored position, when it found its position out of range).",
    ["topic"],
)
CONSUMER_BACKOFF_SECONDS = Gauge(
    "shortener_consumer_backoff_seconds",
    "The wait before a consumer's next retry while Kafka or its store is unavailable (doubling "
    "from 0.5 s to the consumer's cap); 0 once a batch has committed again.",
    ["topic"],
)
CONSUMER_TOPIC_RECREATED = Counter(
    "shortener_consumer_topic_recreated_total",
    "Times a consumer found that its topic is not the one its stored positions belong to (another "
    "topic id, or a position beyond the partition's end): it resynchronised from the start. "
    "Each is also an ERROR (master) or WARNING (replica) log.",
    ["topic"],
)
THREAD_DEATHS = Counter(
    "shortener_thread_deaths_total",
    "Background threads that ended by an exception (or returned before the stop): each is a "
    "CRITICAL log with the traceback; the process then exits non-zero or restarts the thread.",
    ["thread"],
)
THREAD_ALIVE = Gauge(
    "shortener_thread_alive",
    "1 while a supervised background thread runs, 0 after it died (until restarted).",
    ["thread"],
)
LEADER = Gauge(
    "shortener_leader",
    "1 while this process holds its job's lock and works; 0 while it is a standby for another "
    "master host's instance (runtime/leadership.py).",
    ["job"],
)
CONSUMER_CAUGHT_UP = Gauge(
    "shortener_consumer_caught_up",
    "1 once the consumer has reached the end of the topic as it stood when it (re)positioned.",
    ["topic"],
)

# --- click reports (report_clicks) and the master's publishing ------------------------------

CLICK_REPORTS = Counter(
    "shortener_click_reports_total",
    "Click reports sent to the clicks topic, by outcome (sent, failed: requeued for a retry).",
    ["outcome"],
)
CLICKS_UNCOUNTED = Counter(
    "shortener_clicks_uncounted_total",
    "Redirects answered (302) whose click was not counted because the replica's Redis refused "
    "writes while it still answered reads. reason: oom (maxmemory reached under noeviction), "
    "misconf (an RDB snapshot or AOF write failed), readonly (a read-only Redis replica).",
    ["reason"],
)
BOT_CHECKS_SKIPPED = Counter(
    "shortener_bot_checks_skipped_total",
    "Redirects whose User-Agent, never seen by the worker, was counted as human without being "
    "checked against the bot list: the worker's budget of checks a second was spent "
    "(redirects/bots.py; a flood of random User-Agents).",
)
LINKS_PUBLISHED = Counter(
    "shortener_links_published_total",
    "Links sent to the links topic by the master, by outcome (acked, failed: left for the "
    "outbox relay).",
    ["outcome"],
)

LINKS_AUDITED = Counter(
    "shortener_links_audited_total",
    "Links whose newest record in the links topic the master's audit checked, by outcome "
    "(current; resend: older or unreadable, sent again; rebased: newer than the database, "
    "version raised; unknown: no such link).",
    ["outcome"],
)

# --- /create's refusals (links/views.py) ------------------------------------------------------

CREATE_REFUSED = Counter(
    "shortener_create_refused_total",
    "PUT /create requests refused, by reason: the rule of the longurl definition that failed "
    "(scheme, userinfo, host, idna, port, too_long, own_host, private_host, blocked_host, ...), "
    "or the request's fault (method, body, json, too_many_items, auth_missing, auth_refused, "
    "rate_limited, taken_down); PUT /create/bulk counts each refused item. docs/metrics.md "
    "lists them.",
    ["reason"],
)

CREATE_BATCH_SIZE = Histogram(
    "shortener_create_batch_size",
    "Creates in one batch of /create's group commit (links/batching.py): one INSERT, one commit "
    "and one Kafka batch for all of them. A request alone is a batch of 1 (no wait for company); "
    "its _count is the batches run.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


def instrumented(endpoint: str) -> Callable:
    """Decorate a view: observe its latency labelled by endpoint, method and status."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            started = time.perf_counter()
            status = 500
            try:
                response = view(request, *args, **kwargs)
                status = response.status_code
                return response
            finally:
                REQUESTS.labels(endpoint, request.method, str(status)).observe(
                    time.perf_counter() - started)

        return wrapper

    return decorate


def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics in Prometheus' text format, summed over every gunicorn worker."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:  # a single process (the test server, runserver)
        from prometheus_client import REGISTRY as registry
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def serve(port: int) -> None:
    """Expose a long-running command's metrics on `port` (all interfaces unless
    SHORTENER_METRICS_ADDR says otherwise), from a background thread."""
    if not port:
        return
    try:
        start_http_server(port, addr=os.environ.get("SHORTENER_METRICS_ADDR", "0.0.0.0"))
    except OSError as exc:
        # The data path matters more than its metrics: keep running, say so loudly.
        logger.error("cannot serve metrics on port %s: %s; running without them", port, exc)


CLICKS_REFUSED_ENDED = Counter(
    "shortener_clicks_refused_ended_total",
    "Counters in click reports refused because their incarnation ended and was folded "
    "(a replay or a late retry; links/pruning.py)",
)
