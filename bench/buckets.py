"""Benchmark: what the hourly click buckets cost the master's click apply.

Usage (with the embedded services running: `bash stack/services.sh start`):
    .local/venv/bin/python bench/buckets.py [--reports 100000] [--links 10000]

Applies the same click reports (4 replicas over --links links, spread over 24 hours, batches of
SHORTENER_CLICKS_BATCH) with links.clicks.clicks_apply_batch, in this process and on a database
of its own, --runs times each, alternating:
  baseline: the apply without its bucket statement (_buckets_add replaced by a no-op);
  buckets:  the apply as consume_clicks runs it.
Counters, buckets and totals are emptied before each run, so every run raises every counter.
Kafka is not involved (records are built in memory), so the figures are the database's part.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cleanup, database_create, setup

setup("benchb")

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

import links.clicks as clicks  # noqa: E402
from links.models import Link  # noqa: E402
from links.selectors import longurl_digest  # noqa: E402
from links.services import tinyurl_generate  # noqa: E402
from shortener_project.messages import click_report_encode  # noqa: E402


@dataclass
class Rec:
    offset: int
    key: bytes
    value: bytes
    topic: str = "bench"
    partition: int = 0


def run(records: list[Rec], *, topic: str, buckets: bool) -> float:
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE links_clickcounter, links_clickbucket, links_consumerposition; "
                       "UPDATE links_link SET clicks = 0")
    real = clicks._buckets_add
    if not buckets:
        clicks._buckets_add = lambda reports: None
    try:
        batch = settings.SHORTENER_CLICKS_BATCH
        started = time.perf_counter()
        expected = None
        for i in range(0, len(records), batch):
            result = clicks.clicks_apply_batch(topic=topic, partition=0,
                                               records=records[i:i + batch],
                                               expected_position=expected)
            expected = result.next_offset
        return len(records) / (time.perf_counter() - started)
    finally:
        clicks._buckets_add = real


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
        counts: dict[tuple[int, int], int] = {}
        records = []
        for i in range(args.reports):
            link, node = i % args.links, (i // args.links) % len(nodes)
            counts[link, node] = counts.get((link, node), 0) + 100
            key, value = click_report_encode(
                tinyurl=links[link].tinyurl, node=nodes[node], incarnation="a1",
                count=counts[link, node],
                reported_at=start + timedelta(seconds=i * 86400 / args.reports))
            records.append(Rec(i, key, value))
        print(f"{args.reports} reports over {args.links} links, 4 replicas, 24 hours; "
              f"batches of {settings.SHORTENER_CLICKS_BATCH}")
        figures: dict[str, list[float]] = {"baseline": [], "buckets": []}
        for n in range(args.runs):
            for name in ("baseline", "buckets"):
                rate = run(records, topic=f"bench-{name}-{n}", buckets=name == "buckets")
                figures[name].append(rate)
                print(f"  {name:9} run {n + 1}: {rate:8.0f} reports/s")
        base, with_buckets = (statistics.median(figures["baseline"]),
                              statistics.median(figures["buckets"]))
        print(f"median of each: baseline {base:.0f} reports/s, with buckets "
              f"{with_buckets:.0f} reports/s ({with_buckets / base:.0%} of the baseline)")
    finally:
        cleanup()


if __name__ == "__main__":
    main()
