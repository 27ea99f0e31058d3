"""Benchmark: the bytes links and clicks cost in each store (docs/storage.md).

Usage (with the embedded services running: `bash stack/services.sh start`):
    .local/venv/bin/python bench/storage.py [--links 100000]

On a database, topics and a redis-server of its own, at two scales (half of --links, then all):
  links:  Link rows (bulk-inserted, already published, longurls of ~50 characters), the links
          topic's records (link_record_encode, as the master publishes them) and a replica's
          Redis keys (one string per link, keys.link_value_encode, as APPLY_SCRIPT writes it);
  clicks: one click per link counted by the replica's own click script (a counter per link in
          one incarnation), one report per counter on the clicks topic (click_report_encode),
          applied by consume_clicks' own apply (links.totals.clicks_batch_apply): a ClickCounter
          and an hourly ClickBucket row per link;
then the pruning: 24 hourly rows per link for a day out of the hourly chart rolled into one
(links.buckets.buckets_roll_up), and the incarnation ended and folded into FoldedClicks rows
(links.pruning.incarnations_end / incarnations_fold).
Sizes: PostgreSQL's pg_table_size and pg_indexes_size after VACUUM; Redis' used_memory
(INFO memory); Kafka's partition size on disk from the broker (DescribeLogDirs). Each figure is
printed per unit at both scales: where the two agree the cost is linear, and the figure for a
million is the per-unit cost times a million.
"""

from __future__ import annotations

import argparse
import os
import random
import string
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cleanup, database_create, setup

setup("benchs")

import redis as redis_lib  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone as django_timezone  # noqa: E402

from links import buckets, pruning  # noqa: E402
from links.totals import clicks_apply_batch  # noqa: E402
from links.models import ClickBucket, ClickCounter, ConsumerPosition, Link  # noqa: E402
from links.selectors import longurl_digest  # noqa: E402
from links.services import tinyurl_generate  # noqa: E402
from redirects import keys  # noqa: E402
from redirects.counting import CLICK_SCRIPT, click_keys_args  # noqa: E402
from topics.clicks import (
    click_report_encode,  # noqa: E402
    clicks_topic,  # noqa: E402
)
from topics.clients import admin_client  # noqa: E402
from topics.links import (  # noqa: E402
    link_record_encode,  # noqa: E402
    links_topic,
    producer_get,
)
from topics.provisioning import topics_ensure  # noqa: E402

MILLION = 1_000_000


class Rec:
    __slots__ = ("offset", "key", "value", "topic", "partition")

    def __init__(self, offset: int, key: bytes, value: bytes) -> None:
        self.offset, self.key, self.value = offset, key, value
        self.topic, self.partition = "bench", 0


def pg_sizes(table: str) -> tuple[int, int]:
    """(heap + TOAST + maps, indexes) of a table in bytes, after VACUUM."""
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {table}")
        cursor.execute("SELECT pg_table_size(%s), pg_indexes_size(%s)", [table, table])
        return cursor.fetchone()


def topic_bytes(topic: str) -> int:
    """The topic's partitions' size on the broker's disk (DescribeLogDirs)."""
    admin = admin_client()
    try:
        total = 0
        for broker in admin.describe_log_dirs([topic]):
            for log_dir in broker["log_dirs"]:
                for t in log_dir.get("topics", []):
                    if t.get("name") == topic:
                        total += sum(p.get("partition_size", 0) for p in t.get("partitions", []))
        return total
    finally:
        admin.close()


def send(topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = producer_get()
    futures = [producer.send(topic, key=k, value=v) for k, v in records]
    producer.flush()
    for future in futures:
        future.get(timeout=60)


def redis_start(port: int, workdir: str) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis_lib.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc
        except redis_lib.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def used_memory(r: redis_lib.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def row(label: str, per_unit: list[float], unit: str) -> None:
    cells = "  ".join(f"{v:8.1f}" for v in per_unit)
    print(f"  {label:<52} {cells}  B/{unit}   -> {per_unit[-1] * MILLION / 2**20:8.1f} MiB "
          f"per million")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--links", type=int, default=100_000)
    args = parser.parse_args()
    scales = [args.links // 2, args.links]
    rng = random.Random(1)

    from django.conf import settings

    database_create()
    topics_ensure()
    workdir = tempfile.mkdtemp(prefix="bench-storage-")
    port = 20000 + os.getpid() % 20000
    redis_proc = redis_start(port, workdir)
    r = redis_lib.Redis(port=port)
    try:
        print(f"storage at {scales[0]:,} and {scales[1]:,} links (per unit at each scale; the "
              f"last column times a million)")
        r.set(keys.clicks_runid_key(), r.info("server")["run_id"])  # no incarnation churn
        base_redis = used_memory(r)
        base = {t: pg_sizes(t) for t in ("links_link", "links_clickcounter",
                                         "links_clickbucket", "links_foldedclicks")}
        links: list[Link] = []
        per: dict[str, list[float]] = {}
        now = django_timezone.now()
        for n in scales:
            new = []
            for i in range(len(links), n):
                path = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(10, 30)))
                longurl = f"https://www.example.com/articles/{path}/{i}"  # ~50 characters
                new.append(Link(tinyurl=tinyurl_generate(), longurl=longurl,
                                longurl_sha256=longurl_digest(longurl), published_at=now))
            Link.objects.bulk_create(new, batch_size=5000)
            links += new
            for i in range(0, len(new), 10000):
                send(links_topic(), [link_record_encode(
                    tinyurl=x.tinyurl, version=1, longurl=x.longurl, created_at=now)
                    for x in new[i:i + 10000]])
                pipe = r.pipeline(transaction=False)
                for x in new[i:i + 10000]:
                    pipe.set(keys.link_key(x.tinyurl), keys.link_value_encode(
                        keys.LinkValue(version=1, expires_at=None, longurl=x.longurl)))
                pipe.execute()
            table, index = pg_sizes("links_link")
            per.setdefault("pg_links_table", []).append((table - base["links_link"][0]) / n)
            per.setdefault("pg_links_index", []).append((index - base["links_link"][1]) / n)
            per.setdefault("kafka_links", []).append(topic_bytes(links_topic()) / n)
            per.setdefault("redis_links", []).append((used_memory(r) - base_redis) / n)

        print("links")
        row("PostgreSQL links_link, table", per["pg_links_table"], "link")
        row("PostgreSQL links_link, its 5 indexes", per["pg_links_index"], "link")
        row("Kafka links topic (one record per link)", per["kafka_links"], "link")
        row("a replica's Redis (one string per link)", per["redis_links"], "link")

        # --- clicks: one click per link, one counter per link, one report per counter ---
        sha = r.script_load(CLICK_SCRIPT)
        redis_links = used_memory(r)
        done = 0
        offset = 0
        incarnation = None
        for n in scales:
            batch = links[done:n]
            pipe = r.pipeline(transaction=False)
            for x in batch:
                k, a = click_keys_args(x.tinyurl)
                pipe.evalsha(sha, len(k), *k, *a)
            pipe.execute()
            marked = used_memory(r)
            incarnation = r.get(keys.clicks_incarnation_key()).decode()
            reports = [click_report_encode(tinyurl=x.tinyurl, node="replica-1",
                                           incarnation=incarnation, count=1,
                                           reported_at=datetime.now(timezone.utc))
                       for x in batch]
            send(clicks_topic(), reports)
            for i in range(0, len(reports), settings.SHORTENER_CLICKS_BATCH):
                chunk = reports[i:i + settings.SHORTENER_CLICKS_BATCH]
                clicks_apply_batch(topic="bench-clicks", partition=0,
                                   records=[Rec(offset + j, k, v) for j, (k, v) in
                                            enumerate(chunk)],
                                   expected_position=offset or None)
                offset += len(chunk)
            done = n
            # Once reported, the counter leaves the dirty set (the reporter's ACK_SCRIPT): what
            # that frees is the set's cost per member while unreported.
            r.delete(keys.clicks_dirty_key())
            per.setdefault("redis_dirty", []).append((marked - used_memory(r)) / len(batch))
            per.setdefault("redis_counter", []).append((used_memory(r) - redis_links) / n)
            for table, name in (("links_clickcounter", "counter"), ("links_clickbucket", "bucket")):
                t, i = pg_sizes(table)
                per.setdefault(f"pg_{name}", []).append((t + i - sum(base[table])) / n)
            per.setdefault("kafka_clicks", []).append(topic_bytes(clicks_topic()) / n)
        print("clicks (one click on each link: one counter, one report, one hourly row each)")
        row("a replica's Redis, counter key", per["redis_counter"], "counter")
        row("  + while unreported (member of the dirty set)", per["redis_dirty"], "counter")
        row("Kafka clicks topic (one report per counter)", per["kafka_clicks"], "report")
        row("PostgreSQL links_clickcounter, table + index", per["pg_counter"], "counter")
        row("PostgreSQL links_clickbucket, table + 2 indexes", per["pg_bucket"], "bucket row")

        # --- pruning: a day of 24 hourly rows per link rolled into one; the incarnation folded
        sample = links[: len(links) // 10]
        day = (buckets.buckets_roll_up_before(now=now) - timedelta(days=3))
        ClickBucket.objects.bulk_create(
            [ClickBucket(link=x, node="replica-1", hour=day + timedelta(hours=h), clicks=1)
             for x in sample for h in range(24)], batch_size=10000)
        old_rows = ClickBucket.objects.filter(hour__lt=day + timedelta(days=1)).count()
        rolled = buckets.buckets_roll_up(now=now)
        left = ClickBucket.objects.filter(hour__lt=day + timedelta(days=1)).count()
        print(f"roll-up: {old_rows:,} hourly rows of one old day ({len(sample):,} links) -> "
              f"{left:,} daily rows ({rolled:,} removed; {old_rows / max(left, 1):.0f} to 1)")

        ConsumerPosition.objects.get_or_create(topic=clicks_topic(), partition=0,
                                               defaults={"next_offset": 0})
        ended = pruning.incarnations_end(current=set(), now=now + timedelta(days=30))
        fold = pruning.incarnations_fold()
        t, i = pg_sizes("links_foldedclicks")
        folded = (t + i - sum(base["links_foldedclicks"])) / max(fold.counters, 1)
        print(f"fold: incarnation(s) {ended} ended: {fold.counters:,} counters -> FoldedClicks, "
              f"{fold.tombstones:,} tombstones; FoldedClicks {folded:.1f} B per (link, node) row "
              f"(table + index); {ClickCounter.objects.count():,} counters left")
        print(f"clicks topic after the tombstones: {topic_bytes(clicks_topic()):,} bytes "
              "(until compaction removes the keys, then the tombstones after "
              "delete.retention.ms)")
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        cleanup()


if __name__ == "__main__":
    main()
