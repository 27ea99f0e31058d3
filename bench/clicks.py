"""Benchmark: how many click reports per second the master's consume_clicks applies.

Usage (with the embedded services running: `bash stack/services.sh start`):
    .local/venv/bin/python bench/clicks.py [--reports 200000] [--links 10000]

Fills a clicks topic of its own with reports (absolute counts from 4 replicas over --links links,
as real replicas send them), then measures, in one run:
  baseline: a bare kafka-python read of the topic (no decode, no database);
  consume_clicks: from process start until its position in PostgreSQL reaches the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from datetime import datetime, timezone

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, cleanup, database_create, setup

setup("benchk")

from django.conf import settings  # noqa: E402
from kafka import KafkaConsumer, TopicPartition  # noqa: E402

from links.models import ConsumerPosition, Link  # noqa: E402
from links.selectors import longurl_digest  # noqa: E402
from links.services import tinyurl_generate  # noqa: E402
from shortener_project import bus  # noqa: E402
from shortener_project.messages import click_report_encode  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=200_000)
    parser.add_argument("--links", type=int, default=10_000)
    args = parser.parse_args()
    database_create()
    try:
        bus.topics_ensure()
        links = [Link(tinyurl=tinyurl_generate(), longurl=f"https://bench.example/{i}",
                      longurl_sha256=longurl_digest(f"https://bench.example/{i}"))
                 for i in range(args.links)]
        Link.objects.bulk_create(links, batch_size=5000)
        producer = bus.producer_get()
        now = datetime.now(timezone.utc)
        nodes = ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]
        counts: dict[tuple[int, int], int] = {}
        for i in range(args.reports):
            link, node = i % args.links, (i // args.links) % len(nodes)
            counts[link, node] = counts.get((link, node), 0) + 100
            key, value = click_report_encode(tinyurl=links[link].tinyurl, node=nodes[node],
                                             incarnation="a1", count=counts[link, node],
                                             reported_at=now)
            producer.send(bus.clicks_topic(), key=key, value=value)
        producer.flush()
        tp = TopicPartition(bus.clicks_topic(), 0)
        probe = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS)
        in_topic = probe.end_offsets([tp])[tp]
        probe.close()
        if in_topic != args.reports:
            raise SystemExit(f"only {in_topic} of {args.reports} reports reached the topic")
        print(f"consume_clicks benchmark, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} "
              f"cores: {args.reports} reports over {args.links} links x {len(nodes)} replicas")

        consumer = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
                                 max_poll_records=5000, max_partition_fetch_bytes=8 << 20)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        started, seen = time.perf_counter(), 0
        while seen < args.reports:
            seen += sum(len(r) for r in consumer.poll(timeout_ms=1000).values())
        bare = time.perf_counter() - started
        consumer.close()
        print(f"  baseline, bare kafka-python read : {bare:6.2f}s {args.reports / bare:9.0f} /s")

        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "manage.py", "consume_clicks", "--metrics-port",
                                 "0"], cwd=ROOT, env={**os.environ, "SHORTENER_LOG_LEVEL": "WARNING"})
        try:
            while not ConsumerPosition.objects.filter(topic=bus.clicks_topic(),
                                                      next_offset__gte=args.reports).exists():
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait()
        total = sum(Link.objects.values_list("clicks", flat=True))
        assert total == sum(counts.values()), (total, sum(counts.values()))
        print(f"  consume_clicks (from start)       : {elapsed:6.2f}s "
              f"{args.reports / elapsed:9.0f} /s   (totals: {total} clicks)")
    finally:
        cleanup()


if __name__ == "__main__":
    main()
