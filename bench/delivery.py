"""The delivery experiment: what each topic loses against exactly-once, case by case, measured.

Usage (with the embedded services running: `bash stack/services.sh start`):
    .local/venv/bin/python bench/delivery.py [--clicks 20000] [--links 20] [--case NAME ...]

It builds a master (its own database and topics, prefix deliv<time>; the outbox relay
`republish_links --pending --follow`, which also audits the links topic; `consume_clicks`) and
two replicas (each its own redis-server, consume_links, gunicorn, report_clicks with a 2 s
flush), then runs the cases (all by default, in this order):

clicks topic
  kills     N clicks over both replicas while SIGKILLing, at 20/40/60/80 % of the run, replica
            1's report_clicks; consume_clicks; replica 2's report_clicks and consume_links;
            consume_clicks again; each restarted at once. Expected: recorded == made.
  wipe      N/2 clicks on replica 1, whose Redis is restarted empty half-way (no persistence).
            Expected: lost == what it had counted but not reported at the wipe (at most one
            flush interval of its clicks).
  node      replica 1 restarted with another SHORTENER_NODE_ID over the same Redis, N/10
            clicks before and after. Expected: recorded == made (nothing counted twice).
  rollback  replica 1's Redis snapshotted, N/10 clicks reported, then the Redis restarted from
            the snapshot (older counts, same incarnation), N/10 clicks more. Expected: every
            click made after the restore recorded.
links topic (the topic's compaction sped up: segments roll every 0.5 s, any dirt is cleaned)
  links     K links taken down while replica 2's consume_links is stopped (SIGSTOP), and for K
            others taken down, their earlier "active" record re-produced verbatim after the
            takedown; then wait until compaction left one record per link, resume replica 2,
            and start replica 3 from nothing. Expected: every replica answers 404 for all 2K.
Prints the figures; docs/delivery-guarantees.md quotes them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, cleanup, database_create, setup

PREFIX = setup("deliv", SHORTENER_LOG_LEVEL="WARNING", SHORTENER_CLICKS_FLUSH_SECONDS="2")

from django.conf import settings  # noqa: E402
from django.db.models import Sum  # noqa: E402
from kafka import KafkaConsumer, TopicPartition  # noqa: E402
from kafka.admin import ConfigResource, ConfigResourceType  # noqa: E402

from links import publishing, services  # noqa: E402
from links.models import ConsumerPosition, Link  # noqa: E402
from testkit import ClicksConsumerProcess, Replica, topic_read, wait_until  # noqa: E402
from topics.clicks import clicks_topic  # noqa: E402
from topics.clients import admin_client  # noqa: E402
from topics.links import (  # noqa: E402
    link_record_encode,  # noqa: E402
    links_topic,
    producer_get,
)
from topics.provisioning import topics_ensure  # noqa: E402

CASES = ("kills", "wipe", "node", "rollback", "links")
FLUSH = 2


def total_recorded(tinyurls: list[str]) -> int:
    return Link.objects.filter(tinyurl__in=tinyurls).aggregate(n=Sum("clicks"))["n"] or 0


def topic_end(topic: str) -> int:
    probe = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS)
    try:
        tp = TopicPartition(topic, 0)
        return probe.end_offsets([tp])[tp]
    finally:
        probe.close()


def settle(consumer: ClicksConsumerProcess) -> None:
    """Wait until the master has applied everything in the clicks topic."""
    end = topic_end(clicks_topic())
    wait_until(lambda: ConsumerPosition.objects.filter(topic=clicks_topic(),
                                                       next_offset__gte=end).exists(),
               timeout=120, what="consume_clicks to reach the end of the topic")


def click_many(plan: list[tuple[Replica, str]], events: dict[int, callable]) -> dict[str, int]:
    made: dict[str, int] = {}
    lock = threading.Lock()

    def one(item: tuple[Replica, str]) -> None:
        replica, tinyurl = item
        for _ in range(100):  # a replica's web may be briefly unavailable; retry, count once
            try:
                if replica.get(tinyurl).status_code == 302:
                    with lock:
                        made[replica.name] = made.get(replica.name, 0) + 1
                    return
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{replica.name} never served {tinyurl}")

    chunk = max(1, len(plan) // 100)
    with ThreadPoolExecutor(4) as pool:
        for start in range(0, len(plan), chunk):
            percent = start * 100 // len(plan)
            if percent in events:
                events.pop(percent)()
            list(pool.map(one, plan[start:start + chunk]))
    return made


def restart(replica: Replica, what: str) -> None:
    if what == "reporter":
        replica.stop_reporter(signal.SIGKILL)
        replica.start_reporter(flush_seconds=FLUSH)
    elif what == "links":
        replica.stop_consumer(signal.SIGKILL)
        replica.start_consumer()


class Relay:
    """The master's outbox relay and links-topic audit: `republish_links --pending --follow`."""

    def __init__(self, log: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "republish_links", "--pending", "--follow",
             "--interval", "0.5"], cwd=ROOT, env=os.environ.copy(),
            stdout=open(log, "ab"), stderr=subprocess.STDOUT)

    def close(self) -> None:
        Replica._stop(self.proc, signal.SIGTERM, 30)


class Experiment:
    def __init__(self, args, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.replicas: list[Replica] = []
        self.consumer: ClicksConsumerProcess | None = None
        self.relay: Relay | None = None
        self.rows: list[tuple[str, str, str]] = []  # (topic, case, figures)

    def start(self) -> None:
        topics_ensure()
        self.links = [services.link_create(longurl=f"https://example.com/delivery/{i}").link.tinyurl
                      for i in range(self.args.links)]
        self.consumer = ClicksConsumerProcess(self.tmp)
        self.consumer.start()
        self.relay = Relay(self.tmp / "relay.log")
        for name in ("replica-1", "replica-2"):
            self.replicas.append(self.replica_start(name))

    def replica_start(self, name: str) -> Replica:
        replica = Replica(name, self.tmp)
        replica.start_redis()
        replica.start_consumer()
        replica.start_web()
        replica.start_reporter(flush_seconds=FLUSH)
        wait_until(lambda: all(replica.targets(self.links)), timeout=120,
                   what=f"{name} to load the links")
        return replica

    def close(self) -> None:
        for replica in self.replicas:
            replica.close()
        if self.relay is not None:
            self.relay.close()
        if self.consumer is not None and self.consumer.alive():
            self.consumer.stop(signal.SIGKILL)

    def quiesce(self) -> None:
        """Every reporter stopped gracefully (it reports what it counted), the master caught up,
        then the reporters started again."""
        for replica in self.replicas:
            replica.stop_reporter()
        settle(self.consumer)
        for replica in self.replicas:
            replica.start_reporter(flush_seconds=FLUSH)

    def record(self, topic: str, case: str, figures: str) -> None:
        print(f"  {topic:6} {case:9} {figures}", flush=True)
        self.rows.append((topic, case, figures))

    # --- clicks -----------------------------------------------------------------------------

    def case_kills(self) -> None:
        r1, r2 = self.replicas[:2]
        consumer = self.consumer

        def kill_consumer() -> None:
            consumer.stop(signal.SIGKILL)
            consumer.start()

        before = total_recorded(self.links)
        n = self.args.clicks
        plan = [(self.replicas[i % 2], self.links[(i // 2) % len(self.links)]) for i in range(n)]
        made = click_many(plan, {
            20: lambda: restart(r1, "reporter"),
            40: kill_consumer,
            60: lambda: (restart(r2, "reporter"), restart(r2, "links")),
            80: kill_consumer,
        })
        self.quiesce()
        got = total_recorded(self.links) - before
        m = sum(made.values())
        self.record("clicks", "kills", f"made {m}, recorded {got}, lost {max(0, m - got)}, "
                    f"counted twice {max(0, got - m)}")

    def case_wipe(self) -> None:
        r1 = self.replicas[0]
        n = self.args.clicks // 2
        unreported: list[int] = []

        def wipe() -> None:
            # What replica 1 counted beyond what the master holds: the most a wipe can lose.
            counted = sum(r1.clicks_count(t) for t in self.links)
            reported = total_recorded(self.links) - base_master + base_r1
            unreported.append(counted - reported)
            r1.restart_redis_empty()
            wait_until(lambda: all(r1.targets(self.links)), timeout=60, what="r1 rebuilt")

        self.quiesce()
        before = total_recorded(self.links)
        # Replica 1's counters and the master's total at the start; the master's increase
        # comes from replica 1 alone in this case.
        base_r1 = sum(r1.clicks_count(t) for t in self.links)
        base_master = before
        made = click_many([(r1, self.links[i % len(self.links)]) for i in range(n)], {50: wipe})
        self.quiesce()
        got = total_recorded(self.links) - before
        m = made.get(r1.name, 0)
        self.record("clicks", "wipe", f"made {m}, recorded {got}, lost {m - got} (counted but "
                    f"not yet reported at the wipe: {unreported[0]}), counted twice "
                    f"{max(0, got - m)}")

    def case_node(self) -> None:
        r1 = self.replicas[0]
        n = max(100, self.args.clicks // 10)
        self.quiesce()
        before = total_recorded(self.links)
        made = click_many([(r1, self.links[i % len(self.links)]) for i in range(n // 2)], {})
        # The whole replica restarted under another node id, over the same Redis.
        r1.stop_reporter()
        r1.stop_consumer()
        r1._stop(r1.web)
        r1.env["SHORTENER_NODE_ID"] = f"{r1.name}-renamed"
        r1.start_consumer()
        r1.start_web()
        r1.start_reporter(flush_seconds=FLUSH)
        made2 = click_many([(r1, self.links[i % len(self.links)]) for i in range(n - n // 2)], {})
        self.quiesce()
        got = total_recorded(self.links) - before
        m = made.get(r1.name, 0) + made2.get(r1.name, 0)
        self.record("clicks", "node", f"made {m}, recorded {got}, lost {max(0, m - got)}, "
                    f"counted twice {max(0, got - m)}")

    def case_rollback(self) -> None:
        r1 = self.replicas[0]
        n = max(100, self.args.clicks // 10)
        self.quiesce()
        r1.redis.save()  # the snapshot a restore will bring back
        snapshot = self.tmp / "rollback.rdb"
        shutil.copy(r1.dir / "dump.rdb", snapshot)
        click_many([(r1, self.links[i % len(self.links)]) for i in range(n)], {})
        self.quiesce()  # reported and applied: the master has counts above the snapshot's
        before = total_recorded(self.links)
        # Redis restarted from the older snapshot (a restored backup, an older RDB).
        r1._stop(r1.redis_proc, signal.SIGKILL)
        shutil.copy(snapshot, r1.dir / "dump.rdb")
        r1.start_redis()
        made = click_many([(r1, self.links[i % len(self.links)]) for i in range(n)], {})
        self.quiesce()
        got = total_recorded(self.links) - before
        m = made.get(r1.name, 0)
        self.record("clicks", "rollback", f"made after the restore {m}, recorded {got}, "
                    f"lost {max(0, m - got)}, counted twice {max(0, got - m)}")

    # --- links ------------------------------------------------------------------------------

    def case_links(self) -> None:
        k = self.args.takedowns
        r2 = self.replicas[1]
        topic = links_topic()
        admin = admin_client()
        # Compaction within seconds rather than days (the cleaner still wakes every 15 s).
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {
            "segment.ms": "500", "min.cleanable.dirty.ratio": "0.001",
            "min.compaction.lag.ms": "0", "delete.retention.ms": "0"})])
        admin.close()
        paused = [services.link_create(longurl=f"https://example.com/paused/{i}").link
                  for i in range(k)]
        stale = [services.link_create(longurl=f"https://example.com/stale/{i}").link
                 for i in range(k)]
        everyone = [link.tinyurl for link in paused + stale]
        for r in self.replicas:
            wait_until(lambda r=r: all(r.targets(everyone)), timeout=60, what="links loaded")

        os.kill(r2.consumer.pid, signal.SIGSTOP)
        started = time.monotonic()
        for link in paused:
            services.link_set_disabled(link=link, disabled=True)
        for link in stale:
            earlier = link_record_encode(tinyurl=link.tinyurl, version=link.state_version,
                                         longurl=link.longurl, created_at=link.created_at)
            services.link_set_disabled(link=link, disabled=True)
            producer_get().send(topic, key=earlier[0], value=earlier[1]).get(timeout=10)

        # The relay's audit sends the current state after each stale copy; compaction then
        # leaves one record per link. A record now and then rolls the active segment.
        filler = self.links[0]
        left: dict[str, list[dict]] = {}

        def compacted() -> bool:
            publishing.links_publish(links=Link.objects.filter(tinyurl=filler))
            left.clear()
            for rec in topic_read(topic):
                if rec.key.decode() in everyone:
                    left.setdefault(rec.key.decode(), []).append(json.loads(rec.value))
            return all(len(left.get(t, ())) == 1 for t in everyone)

        wait_until(compacted, timeout=300, interval=2, what="compaction to leave one record "
                   "per link")
        compaction_s = time.monotonic() - started
        versions = dict(Link.objects.filter(tinyurl__in=everyone)
                        .values_list("tinyurl", "state_version"))
        current = sum(left[t][0]["state"] == "disabled" and left[t][0]["version"] == versions[t]
                      for t in everyone)
        os.kill(r2.consumer.pid, signal.SIGCONT)
        r3 = Replica("replica-3", self.tmp)  # a new replica, from nothing
        r3.start_redis()
        r3.start_consumer()
        r3.start_web()
        self.replicas.append(r3)
        end = topic_end(topic)
        caught = {}
        for r in self.replicas:
            try:
                wait_until(lambda r=r: (r.position() or 0) >= end, timeout=60,
                           what=f"{r.name} to catch up")
                caught[r.name] = True
            except AssertionError:
                caught[r.name] = False
        wrong = {r.name: sum(r.get(t).status_code != 404 for t in everyone)
                 for r in self.replicas}
        self.record("links", "takedown", f"{k} taken down while replica-2's consumer was "
                    f"stopped, {k} followed by a stale copy; compacted to one record per link "
                    f"in {compaction_s:.0f}s, that record the current disabled state for "
                    f"{current}; "
                    f"answers other than 404 of {2 * k}: " +
                    ", ".join(f"{name} {n}" + ("" if caught[name] else " (never caught up)")
                              for name, n in wrong.items()))


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--clicks", type=int, default=20_000)
    parser.add_argument("--links", type=int, default=20)
    parser.add_argument("--takedowns", type=int, default=50, help="K of the links case")
    parser.add_argument("--case", action="append", choices=CASES,
                        help="run only these cases (repeatable); default: all")
    args = parser.parse_args()

    database_create()
    tmp = Path(tempfile.mkdtemp(prefix="delivery-"))
    experiment = Experiment(args, tmp)
    try:
        experiment.start()
        print(f"delivery experiment, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
              f"flush every {FLUSH} s, {args.links} links clicked", flush=True)
        for case in args.case or CASES:
            getattr(experiment, f"case_{case}")()
        totals = Link.objects.aggregate(n=Sum("clicks"))["n"]
        print(f"  (link totals in PostgreSQL sum to {totals})")
    finally:
        experiment.close()
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
