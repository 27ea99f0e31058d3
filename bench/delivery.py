"""The delivery experiment: clicks made vs clicks recorded, while processes are killed.

Usage (with the embedded services running: `bash stack/services.sh start`):
    .local/venv/bin/python bench/delivery.py [--clicks 20000] [--links 20]

It builds a master (its own database and topics, prefix deliv<time>) and two replicas (each
its own redis-server, consume_links, gunicorn, report_clicks with a 2 s flush), then:
  run 1: N clicks spread over both replicas while SIGKILLing, at 20/40/60/80 % of the run,
         replica 1's report_clicks; the master's consume_clicks; replica 2's report_clicks and
         consume_links; consume_clicks again. Each is restarted at once.
         Expected: recorded == made (nothing lost, nothing counted twice).
  run 2: N/2 more clicks on replica 1, whose Redis is restarted empty half-way (the one
         failure the design loses clicks to). Expected: lost == clicks not yet reported at the
         wipe, at most one flush interval's worth.
Prints the figures; docs/delivery-guarantees.md quotes them.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cleanup, database_create, setup

PREFIX = setup("deliv", SHORTENER_LOG_LEVEL="WARNING", SHORTENER_CLICKS_FLUSH_SECONDS="2")

from django.conf import settings  # noqa: E402
from django.db.models import Sum  # noqa: E402

from links import services  # noqa: E402
from links.models import ClickCounter, ConsumerPosition, Link  # noqa: E402
from shortener_project import bus  # noqa: E402
from tests.support import ClicksConsumerProcess, Replica, wait_until  # noqa: E402


def recorded_by_node() -> dict[str, int]:
    rows = ClickCounter.objects.values("node").annotate(n=Sum("count"))
    return {r["node"]: r["n"] for r in rows}


def settle(consumer: ClicksConsumerProcess) -> None:
    """Wait until the master has applied everything in the clicks topic."""
    from kafka import KafkaConsumer, TopicPartition

    probe = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS)
    tp = TopicPartition(bus.clicks_topic(), 0)
    end = probe.end_offsets([tp])[tp]
    probe.close()
    wait_until(lambda: ConsumerPosition.objects.filter(topic=bus.clicks_topic(),
                                                       next_offset=end).exists(),
               timeout=120, what="consume_clicks to reach the end of the topic")


def click_many(plan: list[tuple[Replica, str]], events: dict[int, callable]) -> dict[str, int]:
    made: dict[str, int] = {}
    lock = threading.Lock()

    def one(item: tuple[Replica, str]) -> None:
        replica, tinyurl = item
        for _ in range(50):  # a replica's web may be briefly unavailable; retry, count once
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
        replica.start_reporter(flush_seconds=2)
    elif what == "links":
        replica.stop_consumer(signal.SIGKILL)
        replica.start_consumer()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--clicks", type=int, default=20_000)
    parser.add_argument("--links", type=int, default=20)
    args = parser.parse_args()

    database_create()
    tmp = Path(tempfile.mkdtemp(prefix="delivery-"))
    replicas: list[Replica] = []
    consumer: ClicksConsumerProcess | None = None
    try:
        bus.topics_ensure()
        links = [services.link_create(longurl=f"https://example.com/delivery/{i}").link.tinyurl
                 for i in range(args.links)]
        consumer = ClicksConsumerProcess(tmp)
        consumer.start()
        for name in ("replica-1", "replica-2"):
            replica = Replica(name, tmp)
            replica.start_redis()
            replica.start_consumer()
            replica.start_web()
            replica.start_reporter(flush_seconds=2)
            replicas.append(replica)
        r1, r2 = replicas
        for replica in replicas:
            wait_until(lambda r=replica: all(r.targets(links)), timeout=60, what="links loaded")

        def kill_consumer() -> None:
            consumer.stop(signal.SIGKILL)
            consumer.start()

        print(f"delivery experiment, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
              f"flush every 2 s")
        plan = [(replicas[i % 2], links[(i // 2) % len(links)]) for i in range(args.clicks)]
        started = time.monotonic()
        made = click_many(plan, {
            20: lambda: restart(r1, "reporter"),
            40: kill_consumer,
            60: lambda: (restart(r2, "reporter"), restart(r2, "links")),
            80: kill_consumer,
        })
        for replica in replicas:
            replica.stop_reporter()  # graceful: flushes
        settle(consumer)
        recorded = recorded_by_node()
        print(f"run 1: {args.clicks} clicks in {time.monotonic() - started:.0f}s with SIGKILLs of "
              "r1 report_clicks, consume_clicks, r2 report_clicks + consume_links, consume_clicks")
        report(made, recorded, replicas)

        # Run 2: replica 1's Redis restarted empty half-way.
        for replica in replicas:
            replica.start_reporter(flush_seconds=2)
        n2 = args.clicks // 2
        plan2 = [(r1, links[i % len(links)]) for i in range(n2)]
        unreported: list[int] = []

        def wipe() -> None:
            # What replica 1 counted but the master does not have yet: the most a wipe can lose.
            counted = sum(r1.clicks_count(t) for t in links)
            inc = r1.redis.get(f"{PREFIX}:clicks:incarnation").decode()
            have = (ClickCounter.objects.filter(node=r1.name, incarnation=inc)
                    .aggregate(n=Sum("count"))["n"] or 0)
            unreported.append(counted - have)
            r1.restart_redis_empty()
            wait_until(lambda: all(r1.targets(links)), timeout=60, what="r1 rebuilt")

        before = recorded_by_node()
        made2 = click_many(plan2, {50: wipe})
        for replica in replicas:
            replica.stop_reporter()
        settle(consumer)
        after = recorded_by_node()
        got = after.get(r1.name, 0) - before.get(r1.name, 0)
        print(f"run 2: {n2} clicks on {r1.name}, its Redis restarted empty at 50 %")
        print(f"  made {made2[r1.name]}, recorded {got}, lost {made2[r1.name] - got} "
              f"(not yet reported at the wipe: {unreported[0]})")
        totals = Link.objects.aggregate(n=Sum("clicks"))["n"]
        assert totals == sum(after.values()), "link totals differ from their counters"
    finally:
        for replica in replicas:
            replica.close()
        if consumer is not None and consumer.alive():
            consumer.stop(signal.SIGKILL)
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def report(made: dict[str, int], recorded: dict[str, int], replicas: list[Replica]) -> None:
    print(f"  {'replica':10} {'made':>8} {'recorded':>9}")
    for replica in replicas:
        print(f"  {replica.name:10} {made.get(replica.name, 0):8} {recorded.get(replica.name, 0):9}")
    m, r = sum(made.values()), sum(recorded.values())
    print(f"  {'total':10} {m:8} {r:9}   lost {max(0, m - r)}, counted twice {max(0, r - m)}")


if __name__ == "__main__":
    main()
