"""Benchmark: what the hourly click buckets cost the master's click apply.

Usage (with the embedded services running: `bash stack/services.sh start`):
    .local/venv/bin/python bench/buckets.py [--reports 100000] [--links 10000] [--runs 3]

Applies the same click reports (4 replicas, each its own counter incarnation, over --links
links, spread over 24 hours, batches of SHORTENER_CLICKS_BATCH) with links.totals'
clicks_batch_apply, in this process and on a database of its own, --runs times each, alternating:
  baseline: the apply without its bucket part (links.totals._COUNTERS_SQL without _BUCKETS_CTE);
  buckets:  the apply as consume_clicks runs it.
Counters, buckets and totals are emptied before each run, so every run raises every counter; a
first pass, not counted, warms PostgreSQL's cache.
Kafka is not involved (records are built in memory) and the batches are decoded before the
clock starts, as consume_clicks decodes a batch while PostgreSQL applies the previous one: the
figures are the database's part, and the CPU a report of its session (load-independent).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cleanup, cpu_seconds, database_create, setup

setup("benchb")

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Sum  # noqa: E402

import links.totals as clicks  # noqa: E402
from links.models import ClickBucket, Link  # noqa: E402
from links.selectors import longurl_digest  # noqa: E402
from links.services import tinyurl_generate  # noqa: E402
from topics.clicks import click_report_encode  # noqa: E402


@dataclass
class Rec:
    offset: int
    key: bytes
    value: bytes
    topic: str = "bench"
    partition: int = 0


def run(batches: list[clicks.ClicksBatch], reports: int, *, topic: str,
        buckets: bool) -> tuple[float, float]:
    """Apply the batches; returns reports/s and the session's CPU microseconds a report."""
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE links_clickcounter, links_clickbucket, links_consumerposition; "
                       "UPDATE links_link SET clicks = 0")
        cursor.execute("VACUUM ANALYZE links_link")
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    real = clicks._APPLY_SQL
    if not buckets:
        clicks._APPLY_SQL = clicks._COUNTERS_SQL.format(buckets="")
    try:
        cpu = cpu_seconds(backend)
        started = time.perf_counter()
        expected = None
        for batch in batches:
            result = clicks.clicks_batch_apply(topic=topic, partition=0, batch=batch,
                                               expected_position=expected)
            expected = result.next_offset
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(backend) - cpu
    finally:
        clicks._APPLY_SQL = real
    if buckets:
        charted = ClickBucket.objects.aggregate(s=Sum("clicks"))["s"]
        assert charted == Link.objects.aggregate(s=Sum("clicks"))["s"], charted
    return reports / elapsed, cpu / reports * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=100_000)
    parser.add_argument("--links", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    database_create()
    try:
        links = [Link(tinyurl=tinyurl_generate(), longurl=f"https://bench.example/{i}",
                      longurl_sha256=longurl_digest(f"https://bench.example/{i}"))
                 for i in range(args.links)]
        Link.objects.bulk_create(links, batch_size=5000)
        start = datetime.now(timezone.utc) - timedelta(hours=24)
        nodes = ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]
        incarnations = [f"{1764000000123456 + n}" for n in range(len(nodes))]
        counts: dict[tuple[int, int], int] = {}
        records = []
        for i in range(args.reports):
            link, node = i % args.links, (i // args.links) % len(nodes)
            counts[link, node] = counts.get((link, node), 0) + 100
            key, value = click_report_encode(
                tinyurl=links[link].tinyurl, node=nodes[node], incarnation=incarnations[node],
                count=counts[link, node],
                reported_at=start + timedelta(seconds=i * 86400 / args.reports))
            records.append(Rec(i, key, value))
        size = settings.SHORTENER_CLICKS_BATCH
        batches = [clicks.clicks_batch_decode(records=records[i:i + size])
                   for i in range(0, len(records), size)]
        print(f"bench/buckets.py, {datetime.now():%Y-%m-%d %H:%M}: {args.reports} reports over "
              f"{args.links} links, 4 replicas, 24 hours; batches of {size}")
        # Not counted: the first pass reads the links table and indexes into PostgreSQL's cache.
        run(batches, len(records), topic="bench-warm-up", buckets=True)
        figures: dict[str, list[tuple[float, float]]] = {"baseline": [], "buckets": []}
        for n in range(args.runs):
            for name in ("baseline", "buckets") if n % 2 == 0 else ("buckets", "baseline"):
                rate, cpu = run(batches, len(records), topic=f"bench-{name}-{n}",
                                buckets=name == "buckets")
                figures[name].append((rate, cpu))
                print(f"  run {n + 1} {name:9}: {rate:8.0f} reports/s, PostgreSQL CPU "
                      f"{cpu:5.1f} us a report; load average {os.getloadavg()[0]:.1f}",
                      flush=True)
        for name, values in figures.items():
            rates, cpus = [r for r, _ in values], [c for _, c in values]
            print(f"{name:9}: best {max(rates):.0f} reports/s (range {min(rates):.0f}-"
                  f"{max(rates):.0f}), PostgreSQL CPU a report {min(cpus):.1f}-{max(cpus):.1f} us")
    finally:
        cleanup()


if __name__ == "__main__":
    main()
