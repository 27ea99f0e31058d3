"""Benchmark: how fast a replica's click reporter flushes dirty counters as report batches.

Usage (with the embedded services running: `bash stack/services.sh start`):
    .local/venv/bin/python bench/reporter.py [--counters 200000] [--rounds 3]

A redis-server of its own (on a free port, no persistence) gets --counters counters of one
incarnation, all marked dirty; ClickReporter.report then claims and sends them exactly as a
flush of `report_clicks` does (claims of 1,000, a record per claim, each acknowledged by Kafka,
acks=all, before the next), to a topic of its own. Printed per round: counters/s and the
reporter's CPU a counter, with the producer as configured (no linger) and, alternating, with the
former linger_ms=50 as the baseline of the same round (topics/clicks.py says why it went).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cleanup, cpu_seconds, setup

setup("benchr")

import redis  # noqa: E402

import topics.clicks as clicks  # noqa: E402
from bench.clicks import tinyurls_make  # noqa: E402
from redirects import keys  # noqa: E402
from redirects.reporter import ClickReporter  # noqa: E402
from testkit import free_port  # noqa: E402
from topics.provisioning import topics_ensure  # noqa: E402


def fill(r: redis.Redis, tinyurls: list[str]) -> None:
    r.flushall()
    r.set(keys.clicks_incarnation_key(), "17640001")
    pipe = r.pipeline(transaction=False)
    for i, t in enumerate(tinyurls):
        member = keys.clicks_member(incarnation="17640001", tinyurl=t)
        pipe.set(keys.clicks_counter_prefix() + member, 1 + i % 7)
        pipe.sadd(keys.clicks_dirty_key(), member)
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def flush(r: redis.Redis, linger: int | None) -> tuple[int, float, float]:
    """One flush of everything dirty; returns (counters sent, seconds, CPU seconds)."""
    own = clicks.clicks_producer_settings
    if linger is not None:
        clicks.clicks_producer_settings = lambda: {**own(), "linger_ms": linger}
    try:
        reporter = ClickReporter(redis=r, stop=threading.Event(), node="10.0.0.2",
                                 flush_seconds=10)
        cpu, started = cpu_seconds(os.getpid()), time.perf_counter()
        sent = reporter.report(keys.clicks_dirty_key(), keys.clicks_due_key())
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(os.getpid()) - cpu
        reporter._producers_close()
    finally:
        clicks.clicks_producer_settings = own
    return sent, elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counters", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        topics_ensure()
        tinyurls = tinyurls_make(args.counters)
        print(f"report_clicks flush benchmark, {args.counters} dirty counters, "
              f"{os.cpu_count()} cores")
        for round_ in range(args.rounds):
            line = f"  round {round_ + 1}:"
            for name, linger in (("as configured", None), ("linger_ms=50", 50)):
                fill(r, tinyurls)
                sent, elapsed, cpu = flush(r, linger)
                assert sent == args.counters and not r.scard(keys.clicks_dirty_key())
                line += (f" | {name}: {sent / elapsed:7.0f} counters/s ({elapsed:5.2f} s), "
                         f"CPU {cpu / sent * 1e6:3.1f} us a counter")
            print(line + " | load average " + " ".join(f"{x:.1f}" for x in os.getloadavg()),
                  flush=True)
    finally:
        server.terminate()
        server.wait()
        cleanup()


if __name__ == "__main__":
    main()
