"""Benchmark: how many counters per second the master's consume_clicks applies from a backlog.

Usage (with the embedded services running: `bash stack/services.sh start`):
    .local/venv/bin/python bench/clicks.py [--links 1000000] [--replicas 2] [--flushes 2]
                                           [--clicked 0.63] [--runs 1] [--profile out.txt]
    .local/venv/bin/python bench/clicks.py --format report [--reports 200000] [--links 100000]
                                           [--zipf 0.6] [--replicas 4] [--runs 1]

--format batch (the default; issue "Writes at scale"): report batches (schema 4: each counter's
count and bots, a quarter of its count) as the replicas send them, ClickReporter.CLAIM_BATCH (1,000) counters a record. --links links (a
million by default), each replica's Redis one incarnation; in each of --flushes flushes every
replica reports each link with probability --clicked (0.63: a million clicks spread over a
million links in a flush interval touch 1 - 1/e of them), its count raised by 1-5 clicks since
its previous report. Printed per run: the bare kafka-python read of the same topic (records/s
and the counters/s they carry), and consume_clicks as deployed (buckets included) in counters
applied per second from its first committed batch, with the CPU a counter of the command and of
its PostgreSQL sessions; then every link's total is checked exactly against the sum of its
counters' last counts, the buckets' sum against the totals, and the bot clicks in all.

--format report: the single reports (schema 2) of before, one record per counter:
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
from redirects.reporter import ClickReporter  # noqa: E402
from topics.clicks import (  # noqa: E402
    click_batch_encode,
    click_report_encode,
    clicks_topic,
)
from topics.provisioning import topics_ensure  # noqa: E402
from topics.records import TINYURL_ALPHABET  # noqa: E402

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


# --- --format batch: a million links, report batches ------------------------------------------


def tinyurls_make(n: int) -> list[str]:
    """n distinct tinyurls, spread over the code space: i * a large odd multiplier modulo 62**7
    is a permutation of the codes, so no two links collide (random codes would: a million of
    them collide with a probability of about 1 in 7)."""
    space = len(TINYURL_ALPHABET) ** 7
    out = []
    for i in range(n):
        v = (i * 2_654_435_761 + 12_345) % space
        code = []
        for _ in range(7):
            v, r = divmod(v, 62)
            code.append(TINYURL_ALPHABET[r])
        out.append("".join(code))
    return out


def links_insert(tinyurls: list[str]) -> None:  # one statement: bulk_create would take minutes
    with connection.cursor() as cursor:
        cursor.execute("""
            INSERT INTO links_link (tinyurl, longurl, longurl_sha256, created_at, published_at,
                                    state_version, clicks)
            SELECT t, 'https://bench.example/' || n,
                   sha256(convert_to('https://bench.example/' || n, 'UTF8')), now(), now(), 1, 0
            FROM unnest(%s::varchar[]) WITH ORDINALITY AS u(t, n)""", [tinyurls])
        cursor.execute("VACUUM ANALYZE links_link")


def batch_workload(*, links: int, replicas: int, flushes: int, clicked: float, seed: int = 1
                   ) -> tuple[list[list[tuple[int, list[tuple[int, int]]]]], dict[int, int]]:
    """Per flush, per replica: (replica, [(link index, absolute count)]); and the expected
    total per link."""
    rng = random.Random(seed)
    counts = [[0] * links for _ in range(replicas)]
    out = []
    for _ in range(flushes):
        flush = []
        for r in range(replicas):
            mine = counts[r]
            pairs = []
            for link in range(links):
                if rng.random() < clicked:
                    mine[link] += rng.randint(1, 5)
                    pairs.append((link, mine[link]))
            flush.append((r, pairs))
        out.append(flush)
    expected: dict[int, int] = {}
    for mine in counts:
        for link, c in enumerate(mine):
            if c:
                expected[link] = expected.get(link, 0) + c
    return out, expected


def bots_of(count: int) -> int:
    """The bot clicks a batch gives a counter of `count` clicks (schema 4): a quarter, a value
    that grows with the count as a replica's bots do."""
    return count // 4


def batch_fill(flushes: list, tinyurls: list[str]) -> tuple[int, int]:
    """Send every flush as report batches of CLAIM_BATCH counters; returns (records, bytes)."""
    producer = KafkaProducer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS, acks="all",
                             linger_ms=20, batch_size=1 << 20, max_request_size=4 << 20)
    size = ClickReporter.CLAIM_BATCH
    records = total = 0
    for flush in flushes:
        now = datetime.now(timezone.utc)
        for replica, pairs in flush:
            for i in range(0, len(pairs), size):
                key, value = click_batch_encode(
                    node=f"10.0.0.{2 + replica}", incarnation=f"{1764000000123456 + replica}",
                    counts=[(tinyurls[link], c, bots_of(c)) for link, c in pairs[i:i + size]],
                    reported_at=now)
                producer.send(clicks_topic(), key=key, value=value)
                records += 1
                total += len(value)
    producer.flush()
    producer.close()
    return records, total


def main_batch(args: argparse.Namespace) -> None:
    links = args.links or 1_000_000
    tinyurls = tinyurls_make(links)
    links_insert(tinyurls)
    flushes, expected = batch_workload(links=links, replicas=args.replicas,
                                       flushes=args.flushes, clicked=args.clicked)
    counters = sum(len(pairs) for flush in flushes for _, pairs in flush)
    records, size = batch_fill(flushes, tinyurls)
    tp = TopicPartition(clicks_topic(), 0)
    probe = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS)
    end = probe.end_offsets([tp])[tp]
    probe.close()
    if end != records:
        raise SystemExit(f"only {end} of {records} records reached the topic")
    print(f"consume_clicks benchmark (report batches), {datetime.now():%Y-%m-%d %H:%M}, "
          f"{os.cpu_count()} cores: {links} links x {args.replicas} replicas x {args.flushes} "
          f"flushes (clicked {args.clicked}): {counters} counters in {records} records of "
          f"~{size // records} B; {len(expected)} links clicked")
    want = sum(expected.values())
    for run in range(args.runs):
        bare = bare_read(tp, records)
        reset_totals()
        before = checkpoints()
        whole, steady, first, cpu_own, cpu_db = consume(
            end, args.profile if run == 0 else None)
        during = checkpoints() - before
        # `first` records were applied before the steady clock started: their share of counters.
        steady_counters = counters * (end - first) / end
        totals = dict(Link.objects.filter(clicks__gt=0).values_list("tinyurl", "clicks"))
        wrong = sum(1 for i, c in expected.items() if totals.get(tinyurls[i]) != c)
        assert not wrong and sum(totals.values()) == want, (wrong, sum(totals.values()), want)
        charted = ClickBucket.objects.aggregate(s=Sum("clicks"))["s"]
        assert charted == want, (charted, want)
        # Every counter's last count is in the last flush that named it: its bots, bots_of().
        last: dict[tuple[int, int], int] = {}
        for flush in flushes:
            for replica, pairs in flush:
                for link, c in pairs:
                    last[(replica, link)] = c
        bots = Link.objects.aggregate(s=Sum("bot_clicks"))["s"]
        assert bots == sum(map(bots_of, last.values())), (bots, "bot clicks")
        print(f"  run {run + 1}: bare kafka-python read {records / bare:6.0f} records/s = "
              f"{counters / bare:8.0f} counters/s | consume_clicks: from start "
              f"{counters / whole:7.0f} counters/s ({whole:5.2f}s), from the first batch "
              f"**{steady_counters / steady:7.0f} counters/s**, CPU a counter: command "
              f"{cpu_own / counters * 1e6:4.1f} us, PostgreSQL {cpu_db / counters * 1e6:4.1f} "
              f"us, {during} checkpoint(s) | totals and buckets exact ({want} clicks over "
              f"{len(totals)} links); load average "
              + " ".join(f"{x:.1f}" for x in os.getloadavg()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--format", choices=["batch", "report"], default="batch")
    parser.add_argument("--reports", type=int, default=200_000)
    parser.add_argument("--links", type=int, help="default: 1,000,000 (batch), 100,000 (report)")
    parser.add_argument("--zipf", type=float, default=0.6)
    parser.add_argument("--replicas", type=int, help="default: 2 (batch), 4 (report)")
    parser.add_argument("--flushes", type=int, default=2)
    parser.add_argument("--clicked", type=float, default=0.63)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--profile", help="py-spy raw output file (first run)")
    args = parser.parse_args()
    batch = args.format == "batch"
    args.replicas = args.replicas or (2 if batch else 4)
    database_create()
    try:
        topics_ensure()
        if batch:
            main_batch(args)
            return
        args.links = args.links or 100_000
        links_insert(tinyurls := tinyurls_make(args.links))
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
