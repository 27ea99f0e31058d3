"""Benchmark: how many click reports per second the master's consume_clicks applies from a backlog.

Usage (with the embedded services running: `bash stack/services.sh start`):
    .local/venv/bin/python bench/clicks.py [--reports 200000] [--links 100000] [--zipf 0.6]
                                           [--replicas 4] [--runs 1] [--profile out.txt]

The workload is the long tail (issue "a clicks path that keeps pace"): in the worst case every
click is a different link and a flush reports each one. Each report picks its link from a
Zipf-like distribution (rank r has weight 1/r**zipf) over --links links and one of --replicas
replicas (each its own counter incarnation), and carries the counter's absolute count, raised by
1-100 clicks since its previous report, encoded exactly as report_clicks sends it. With the
defaults most reports of a 5,000-report batch name a link no other report of the batch names.

Then, in one run and against the same topic:
  baseline:       a bare kafka-python read of the topic (no decode, no database), with
                  consume_clicks' fetch settings;
  consume_clicks: the command as deployed (hourly buckets included), from a backlog, until its
                  position in PostgreSQL reaches the end: from process start (includes Django's
                  start-up) and from its first committed batch (the steady rate). Then every
                  link's total is checked against the sum of its counters' last counts, and the
                  buckets against the totals;
  no buckets:     the same command with the statement of the apply without its bucket part
                  (links.totals._COUNTERS_SQL without _BUCKETS_CTE): what the buckets cost.
The reports are all stamped in the current hour, as a backlog of minutes is.
--runs N measures N times on the same topic (database counters and buckets reset in between).
--profile FILE runs py-spy (if installed) on consume_clicks during the first run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, cleanup, cpu_seconds, database_create, setup

setup("benchk")

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Sum  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

from links.models import ClickBucket, ConsumerPosition, Link  # noqa: E402
from links.selectors import longurl_digest  # noqa: E402
from links.services import tinyurl_generate  # noqa: E402
from topics.clicks import (
    click_report_encode,  # noqa: E402
    clicks_topic,  # noqa: E402
)
from topics.provisioning import topics_ensure  # noqa: E402

HOUR = timedelta(hours=1)


def workload(*, reports: int, links: int, zipf: float, replicas: int,
             seed: int = 1) -> tuple[list[tuple[int, int, int]], dict[int, int], dict[str, int]]:
    """The reports as (link index, replica index, absolute count), the expected total per link,
    and a description of the workload's shape."""
    rng = random.Random(seed)
    cum = list(itertools.accumulate(1 / (rank + 1) ** zipf for rank in range(links)))
    picks = rng.choices(range(links), cum_weights=cum, k=reports)
    counters: dict[tuple[int, int], int] = {}
    out = []
    for link in picks:
        replica = rng.randrange(replicas)
        count = counters.get((link, replica), 0) + rng.randint(1, 100)
        counters[link, replica] = count
        out.append((link, replica, count))
    expected: dict[int, int] = {}
    for (link, _), count in counters.items():
        expected[link] = expected.get(link, 0) + count
    batch = settings.SHORTENER_CLICKS_BATCH
    shape = {
        "distinct links": len(expected),
        "distinct counters": len(counters),
        "distinct links per batch (mean)": round(
            sum(len({link for link, _, _ in out[i:i + batch]}) for i in range(0, reports, batch))
            / -(-reports // batch)),
        "reports of the top link": picks.count(0),
    }
    return out, expected, shape


def fill(reports: list[tuple[int, int, int]], tinyurls: list[str], replicas: int) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS, acks="all",
                             linger_ms=20, batch_size=256 * 1024)
    nodes = [f"10.0.0.{2 + r}" for r in range(replicas)]
    incarnations = [f"{1764000000123456 + r}" for r in range(replicas)]
    now = datetime.now(timezone.utc)
    for link, replica, count in reports:
        key, value = click_report_encode(tinyurl=tinyurls[link], node=nodes[replica],
                                         incarnation=incarnations[replica], count=count,
                                         reported_at=now)
        producer.send(clicks_topic(), key=key, value=value)
    producer.flush()
    producer.close()


def bare_read(tp: TopicPartition, n: int) -> float:
    consumer = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
                             enable_auto_commit=False,
                             max_poll_records=settings.SHORTENER_CLICKS_BATCH,
                             max_partition_fetch_bytes=8 << 20)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    started, seen = time.perf_counter(), 0
    while seen < n:
        seen += sum(len(r) for r in consumer.poll(timeout_ms=1000).values())
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def position() -> int:
    row = ConsumerPosition.objects.filter(topic=clicks_topic()).first()
    return row.next_offset if row else 0


def backends() -> list[int]:
    """The PostgreSQL sessions of this database other than the bench's own."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid()")
        return [row[0] for row in cursor.fetchall()]


# consume_clicks with the apply's statement lacking its bucket part (the baseline of the
# buckets' cost); otherwise exactly manage.py's start.
WITHOUT_BUCKETS = """
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shortener_project.settings")
import django
django.setup()
import links.totals
links.totals._APPLY_SQL = links.totals._COUNTERS_SQL.format(buckets="")
from django.core.management import execute_from_command_line
execute_from_command_line(["manage.py", *sys.argv[1:]])
"""


def checkpoints() -> int:
    """Checkpoints of the whole PostgreSQL server so far. After each, the first change of every
    page writes the whole page to the WAL: other work on a shared server (a dropped database
    forces a checkpoint) makes the same apply cost more."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
        return cursor.fetchone()[0]


def consume(end: int, profile: str | None,
            buckets: bool = True) -> tuple[float, float, int, float, float]:
    """Run consume_clicks (buckets: as deployed; else without its bucket statement) until its
    position reaches `end`. Returns the seconds from process start, the seconds from its first
    committed batch, that batch's end offset, and the CPU seconds of the process and of its
    PostgreSQL sessions (the machine is shared: CPU per report says what the work costs whatever
    else runs)."""
    started = time.perf_counter()
    start = ["manage.py"] if buckets else ["-c", WITHOUT_BUCKETS]
    proc = subprocess.Popen([sys.executable, *start, "consume_clicks", "--metrics-port", "0"],
                            cwd=ROOT, env={**os.environ, "SHORTENER_LOG_LEVEL": "WARNING"})
    spy = None
    try:
        spy_bin = shutil.which("py-spy") or shutil.which("py-spy", path=Path(sys.executable).parent)
        if profile and spy_bin:
            spy = subprocess.Popen([spy_bin, "record", "--pid", str(proc.pid), "--format", "raw",
                                    "--rate", "100", "--idle", "--threads", "--nonblocking",
                                    "-o", profile], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        first_at, first = None, 0
        while True:
            now_pos = position()
            if first_at is None and now_pos > 0:
                first_at, first = time.perf_counter(), now_pos
            if now_pos >= end:
                break
            if proc.poll() is not None:
                raise SystemExit(f"consume_clicks exited with {proc.returncode}")
            time.sleep(0.01)
        done = time.perf_counter()
        try:
            cpu_own = cpu_seconds(proc.pid)
            cpu_db = sum(cpu_seconds(pid) for pid in backends())
        except OSError:  # not Linux, or PostgreSQL on another host
            cpu_own = cpu_db = float("nan")
    finally:
        proc.terminate()
        proc.wait()
        if spy is not None:
            spy.wait()
    return done - started, done - first_at, first, cpu_own, cpu_db


def reset_totals() -> None:
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE links_clickcounter, links_clickbucket, links_consumerposition")
        cursor.execute("UPDATE links_link SET clicks = 0")
        cursor.execute("VACUUM ANALYZE links_link")
        # Every run starts just after a checkpoint (see checkpoints()), whatever else the server
        # did before it.
        cursor.execute("CHECKPOINT")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=200_000)
    parser.add_argument("--links", type=int, default=100_000)
    parser.add_argument("--zipf", type=float, default=0.6)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--profile", help="py-spy raw output file (first run)")
    args = parser.parse_args()
    database_create()
    try:
        topics_ensure()
        tinyurls = [tinyurl_generate() for _ in range(args.links)]
        Link.objects.bulk_create(
            [Link(tinyurl=t, longurl=f"https://bench.example/{i}",
                  longurl_sha256=longurl_digest(f"https://bench.example/{i}"))
             for i, t in enumerate(tinyurls)], batch_size=5000)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE links_link")
        reports, expected, shape = workload(reports=args.reports, links=args.links,
                                            zipf=args.zipf, replicas=args.replicas)
        fill(reports, tinyurls, args.replicas)
        tp = TopicPartition(clicks_topic(), 0)
        probe = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS)
        end = probe.end_offsets([tp])[tp]
        probe.close()
        if end != args.reports:
            raise SystemExit(f"only {end} of {args.reports} reports reached the topic")
        size = sum(len(click_report_encode(tinyurl=tinyurls[0], node="10.0.0.2",
                                           incarnation="1764000000123456", count=c,
                                           reported_at=datetime.now(timezone.utc))[1])
                   for c in (1, 100, 10_000)) // 3
        print(f"consume_clicks benchmark, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} "
              f"cores: {args.reports} reports over {args.links} links (Zipf {args.zipf}) x "
              f"{args.replicas} replicas, batch {settings.SHORTENER_CLICKS_BATCH}, "
              f"~{size} B a report value")
        print("  workload: " + ", ".join(f"{k} {v}" for k, v in shape.items()))
        want = sum(expected.values())
        hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
        for run in range(args.runs):
            bare = bare_read(tp, args.reports)
            line = f"  run {run + 1}: bare kafka-python read {args.reports / bare:7.0f} /s"
            # Alternating which goes first, so that neither always follows the bare read.
            for buckets in ((True, False) if run % 2 == 0 else (False, True)):
                reset_totals()
                before = checkpoints()
                whole, steady, first, cpu_own, cpu_db = consume(
                    end, args.profile if run == 0 and buckets else None, buckets=buckets)
                during = checkpoints() - before
                totals = dict(Link.objects.filter(clicks__gt=0).values_list("tinyurl", "clicks"))
                wrong = sum(1 for i, c in expected.items() if totals.get(tinyurls[i]) != c)
                assert not wrong and sum(totals.values()) == want, (wrong, sum(totals.values()),
                                                                    want)
                charted = dict(ClickBucket.objects.values_list("hour").annotate(Sum("clicks")))
                # Reports stamped just before an hour turned may go to the hour before.
                assert (sum(charted.values()) == want and set(charted) <= {hour, hour - HOUR}
                        if buckets else not charted), charted
                line += (f" | {'with buckets' if buckets else 'no buckets'}: from start "
                         f"{args.reports / whole:6.0f} /s ({whole:4.2f}s), from the first batch "
                         f"{(end - first) / steady:6.0f} /s, CPU a report: command "
                         f"{cpu_own / args.reports * 1e6:4.1f} us, PostgreSQL "
                         f"{cpu_db / args.reports * 1e6:4.1f} us, {during} checkpoint(s)")
            print(line + f" | totals and buckets exact ({want} clicks); load average "
                  + " ".join(f"{x:.1f}" for x in os.getloadavg()), flush=True)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
