"""Benchmark: how fast a fresh replica loads the links topic, beside a bare kafka-python read.

Usage (with the embedded services running, e.g. after `make up` or `bash stack/services.sh start`):
    .local/venv/bin/python bench/catchup.py --links 100000 [--links 1000000] [--rounds 3]
        [--other /path/to/another/checkout]

For each size it fills a topic of its own (prefix bench<time>), then measures, `--rounds` times
over the same topic (one after the other, so that a busy moment of a shared machine shows as one
round's outlier, not as a difference between the two):
  1. baseline: a bare kafka-python consumer reading the topic from the start (no decode, no Redis);
  2. product:  `manage.py consume_links` against a new, empty redis-server, from process start until
     its stored position reaches the end of the topic (includes Django's start-up);
  3. with `--other`: the same consume_links from another checkout (e.g. main's, to compare a
     change against the code before it in the same minutes, on the same topic).
and prints each with links per second, the CPU seconds of the reader (the bare read's process,
consume_links' process and its worker process) and of its redis-server. Topics are deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, cpu_seconds, setup

setup("bench")

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from kafka import KafkaConsumer, TopicPartition  # noqa: E402

from links.services import tinyurl_generate  # noqa: E402
from testkit import free_port  # noqa: E402
from topics.clients import admin_client  # noqa: E402
from topics.links import (  # noqa: E402
    link_record_encode,  # noqa: E402
    links_topic,
    producer_get,
    producer_reset,
)
from topics.provisioning import topics_ensure  # noqa: E402


def fill(n: int) -> float:
    producer = producer_get()
    now = datetime.now(timezone.utc)
    started = time.perf_counter()
    future = None
    for i in range(n):
        key, value = link_record_encode(tinyurl=tinyurl_generate(), version=1,
                                        longurl=f"https://example.com/bench/{i}?utm=x", created_at=now)
        future = producer.send(links_topic(), key=key, value=value)
    producer.flush()
    assert future is not None and future.get(timeout=30)
    return time.perf_counter() - started


def bare_read(n: int) -> tuple[float, float]:
    """Seconds to read the topic's n records, and this process' CPU seconds meanwhile."""
    cpu = time.process_time()
    consumer = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
                             enable_auto_commit=False, max_poll_records=5000,
                             max_partition_fetch_bytes=8 * 1024 * 1024)
    tp = TopicPartition(links_topic(), 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    started = time.perf_counter()
    seen = 0
    while seen < n:
        for records in consumer.poll(timeout_ms=1000).values():
            seen += len(records)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    consumer.close()
    return elapsed, cpu


def product_read(n: int, root: Path = ROOT) -> tuple[float, float, float, float]:
    """Seconds from consume_links' start (in checkout `root`) until Redis holds the topic's end
    position; the CPU seconds meanwhile of its process, of its worker process and of its
    redis-server."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                              stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    env = {**os.environ, "SHORTENER_ROLE": "replica", "SHORTENER_NODE_ID": "bench",
           "REDIS_URL": f"redis://127.0.0.1:{port}/0", "SHORTENER_LOG_LEVEL": "WARNING",
           "SHORTENER_USER": settings.SHORTENER_USER}
    started = time.perf_counter()
    consumer = subprocess.Popen([sys.executable, "manage.py", "consume_links"], cwd=root, env=env)
    key = f"{settings.SHORTENER_USER}:links:positions"
    try:
        while int(client.hget(key, 0) or 0) < n:
            time.sleep(0.01)
            if consumer.poll() is not None:
                raise RuntimeError("consume_links exited")
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(consumer.pid)
        # consume_links' worker process (redirects/links_writes.py), if it has one.
        children = Path(f"/proc/{consumer.pid}/task/{consumer.pid}/children").read_text().split()
        cpu_worker = sum(cpu_seconds(int(pid)) for pid in children)
        cpu_redis = cpu_seconds(server.pid)
        memory = client.info("memory")["used_memory"]
        keys = client.dbsize()
    finally:
        consumer.terminate()
        consumer.wait()
        server.kill()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"    redis: {keys} keys, {memory / 1e6:.1f} MB used ({memory / max(keys, 1):.0f} B/key)")
    return elapsed, cpu, cpu_worker, cpu_redis


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--links", type=int, action="append", help="topic sizes (repeatable)")
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each size")
    parser.add_argument("--other", type=Path, help="another checkout whose consume_links is "
                        "measured too, in every round")
    args = parser.parse_args()
    sizes = args.links or [100_000]
    base_user = settings.SHORTENER_USER
    print(f"catch-up benchmark, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores")
    for n in sizes:
        settings.SHORTENER_USER = f"{base_user}-{n}"
        topics_ensure()
        try:
            print(f"  {n} links: filled the topic in {fill(n):.1f}s")
            for round_ in range(1, args.rounds + 1):
                print(f"  round {round_}, load average {os.getloadavg()[0]:.1f}")
                bare, cpu = bare_read(n)
                print(f"    baseline, bare kafka-python read : {bare:6.2f}s  {n / bare:9.0f} "
                      f"links/s  CPU {cpu:5.2f}s")
                prod, cpu, cpu_worker, cpu_redis = product_read(n)
                print(f"    fresh replica, consume_links     : {prod:6.2f}s  {n / prod:9.0f} "
                      f"links/s  CPU {cpu:5.2f}s, its worker {cpu_worker:4.2f}s, redis "
                      f"{cpu_redis:4.2f}s  ({100 * bare / prod:.0f} % of the bare read)")
                if args.other:
                    prod, cpu, cpu_worker, cpu_redis = product_read(n, args.other)
                    print(f"    the other checkout's consume_links: {prod:6.2f}s  "
                          f"{n / prod:9.0f} links/s  CPU {cpu:5.2f}s, its worker "
                          f"{cpu_worker:4.2f}s, redis {cpu_redis:4.2f}s  "
                          f"({100 * bare / prod:.0f} % of the bare read)")
        finally:
            producer_reset()
            admin = admin_client()
            admin.delete_topics([links_topic()])
            admin.close()


if __name__ == "__main__":
    main()
