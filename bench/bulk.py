"""Benchmark: links created per second end to end, from the call that creates them to every link
answering 302 on BOTH replicas, through PUT /create/bulk, beside PUT /create one by one.

Usage (with the embedded services running: `bash stack/services.sh start`):
    .local/venv/bin/python bench/bulk.py [--links 100000] [--per-call 10000] [--concurrency 2]
                                         [--baseline-links 3000] [--baseline-connections 32]

Starts what `make up` runs for the path of a link (without the outbox relay and the clicks
programs, idle here): a master (gunicorn with the project's gunicorn.conf.py: 2 workers x 16
threads) on a database and topics of its own (prefix bulkb<time>), and two replicas, each its
own redis-server, `consume_links` and web server. The rate limit is off (one client at full
speed, as in bench/create.py). Then, in one run:

  baseline: --baseline-links new links through PUT /create, one a request, on
            --baseline-connections client threads (0: no baseline);
  bulk:     --links new links through PUT /create/bulk, --per-call a call, --concurrency calls
            at a time.

For each link: time to visible = from the start of the call that created it to the moment both
replicas hold it. "Holds it" is read from each replica's Redis position in the links topic
(`<user>:links:positions`, polled every POLL_SECONDS), compared with the offset Kafka gave
the link's record (Link.published_offset, the master's acknowledged offset): consume_links
writes a batch's links and the position past them in one Lua script, so a position past the
offset means the link is there, and a redirect is one read of that Redis (redirects/asgi.py).
Polling one position per replica costs nothing beside the replicas' work, where polling
100,000 keys or HTTP requests would compete with it for the same two cores. Then, as a check,
a sample of the links is asked for over HTTP on both replicas: every one must answer 302 with
its longurl.

Prints, for each: links/s end to end (links / (first call's start -> last link visible on both
replicas)), links/s answered by the master (to the last answer), and the time-to-visible
distribution (p50/p90/p99/max).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, cleanup, cpu_seconds, database_create, setup

PREFIX = setup("bulkb", SHORTENER_LOG_LEVEL="WARNING")

import msgspec  # noqa: E402
import requests  # noqa: E402
from django.conf import settings  # noqa: E402

from bench.redirect import wait_port  # noqa: E402
from links.models import Link  # noqa: E402
from testkit import Replica, free_port, wait_until  # noqa: E402
from topics.provisioning import topics_ensure  # noqa: E402

SAMPLE = 500  # links checked over HTTP on each replica after each run
# Each replica's position is read this often: the times to visible are known to within it.
# Every millisecond cost the client (two HGETs a round) about 7 us of CPU a bulk link, taken
# from the two cores the cluster runs on; times to visible are 50 ms and more.
POLL_SECONDS = 0.005


def pids_of(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


def database_pids() -> list[int]:
    """The server processes of the sessions connected to this benchmark's database."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid()")
        return [row[0] for row in cursor.fetchall()]


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Cpu:
    """CPU seconds used by each part of the cluster between start() and the figures: where a
    link's CPU goes. PostgreSQL and Kafka are the shared services: their figures include what
    other work on the machine made them do meanwhile (and Kafka's, any other broker process
    that ran meanwhile, such as a test's own)."""

    def __init__(self, web: subprocess.Popen, replicas: list[Replica]) -> None:
        self.parts = {
            "master (gunicorn workers)": lambda: children(web.pid),
            "consume_links x2": lambda: [r.consumer.pid for r in replicas],
            "redis-server x2": lambda: [r.redis_proc.pid for r in replicas],
            "PostgreSQL (all sessions)": lambda: pids_of("postgres"),
            # The sessions of the benchmark's own database: the master's work without what
            # other work on a shared machine made PostgreSQL do meanwhile (but without its
            # shared processes either: the WAL writer, the checkpointer).
            "of which this database's": database_pids,
            "Kafka broker": lambda: pids_of("kafka.Kafka"),
            # This benchmark's own process (the client's JSON and HTTP, the position poller):
            # not part of the cluster, but it takes the same two cores.
            "bench client": lambda: [os.getpid()],
        }

    def sample(self) -> dict[str, float]:
        out = {}
        for name, pids in self.parts.items():
            total = 0.0
            for pid in pids():
                try:
                    total += cpu_seconds(pid)
                except (OSError, IndexError):
                    pass
            out[name] = total
        return out

    def start(self) -> None:
        self.before = self.sample()

    def figures(self, n: int) -> str:
        after = self.sample()
        return ", ".join(f"{name} {(after[name] - self.before[name]) / n * 1e6:.0f}"
                         for name in self.parts)


class Positions:
    """Each replica's position in the links topic, polled in a thread: a timeline per replica of
    (seconds since the run's start, next offset to apply) at each change."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self.key = f"{settings.SHORTENER_USER}:links:positions"
        self.timelines: list[tuple[list[float], list[int]]] = [([], []) for _ in replicas]
        self.stop = threading.Event()
        self.origin = time.perf_counter()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def start(self, origin: float) -> None:
        self.origin = origin
        self.thread.start()

    def poll(self) -> None:
        while not self.stop.is_set():
            for replica, (times, offsets) in zip(self.replicas, self.timelines):
                now = time.perf_counter() - self.origin
                position = int(replica.redis.hget(self.key, 0) or 0)
                if not offsets or position != offsets[-1]:
                    times.append(now)
                    offsets.append(position)
            time.sleep(POLL_SECONDS)

    def reached(self, offset: int) -> float | None:
        """When every replica's position first passed `offset` (seconds since the origin)."""
        latest = 0.0
        for times, offsets in self.timelines:
            i = bisect.bisect_right(offsets, offset)  # positions only grow
            if i == len(offsets):
                return None
            latest = max(latest, times[i])
        return latest

    def caught_up(self, offset: int) -> bool:
        return all(offsets and offsets[-1] > offset for _, offsets in self.timelines)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def report(name: str, n: int, started: dict[str, float], answered: float,
           replicas: list[Replica], positions: Positions, cpu: Cpu) -> None:
    """Wait until both replicas passed every link's offset; print the figures; check a sample
    over HTTP."""
    offsets = dict(Link.objects.filter(tinyurl__in=list(started))
                   .values_list("tinyurl", "published_offset"))
    missing = [t for t in started if offsets.get(t) is None]
    assert not missing, f"{len(missing)} links not acknowledged, e.g. {missing[:3]}"
    last = max(offsets.values())
    wait_until(lambda: positions.caught_up(last), timeout=300, interval=0.01,
               what="both replicas to hold every link")
    visible = {t: positions.reached(o) for t, o in offsets.items()}
    ttv = [visible[t] - started[t] for t in started]
    first = min(started.values())
    # The end: every link visible on both replicas AND its tinyurl in the client's hands (a
    # record can reach the replicas before its call's answer has been sent).
    end = max(max(visible.values()), answered)
    print(f"  {name}: {n} links; master answered in {answered - first:.2f}s "
          f"({n / (answered - first):,.0f} links/s); all visible on both replicas after "
          f"{max(visible.values()) - first:.2f}s: **{n / (end - first):,.0f} links/s end to "
          "end**")
    print(f"    time to visible on both replicas: p50 {percentile(ttv, 50) * 1000:.0f} ms, "
          f"p90 {percentile(ttv, 90) * 1000:.0f} ms, p99 {percentile(ttv, 99) * 1000:.0f} ms, "
          f"max {max(ttv) * 1000:.0f} ms", flush=True)
    print(f"    CPU a link, us: {cpu.figures(n)}")
    longurls = dict(Link.objects.filter(tinyurl__in=random.sample(list(started),
                                                                  min(SAMPLE, n)))
                    .values_list("tinyurl", "longurl"))
    for replica in replicas:
        for tinyurl, longurl in longurls.items():
            answer = replica.get(tinyurl)
            assert (answer.status_code, answer.headers.get("Location")) == (302, longurl), \
                (replica.name, tinyurl, answer.status_code)
    print(f"    checked over HTTP: {len(longurls)} sampled links answer 302 with their longurl "
          f"on both replicas")


def run_single(url: str, n: int, connections: int, origin: float) -> tuple[dict, float]:
    """PUT /create one link a request on `connections` threads; (tinyurl -> start, last answer)."""
    started: dict[str, float] = {}
    local = threading.local()
    tag = f"{time.time_ns()}"

    def one(i: int) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        t0 = time.perf_counter() - origin
        answer = session.put(f"{url}/create", timeout=60,
                             json={"longurl": f"https://bench.example/single/{tag}/{i}"})
        assert answer.status_code == 200, answer.text
        started[answer.json()["tinyurl"]] = t0

    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(one, range(n)))
    return started, time.perf_counter() - origin


def run_bulk(url: str, n: int, per_call: int, concurrency: int,
             origin: float) -> tuple[dict, float]:
    """PUT /create/bulk of `per_call` links a call, `concurrency` calls at a time."""
    started: dict[str, float] = {}
    local = threading.local()
    tag = f"{time.time_ns()}"
    # The bodies are made, and encoded, before the clock starts, and the answers decoded with
    # msgspec: the client's own work is not the master's, and on a 2-core machine every µs the
    # client spends is taken from the cluster (its CPU a link is printed with the others').
    bodies = [json.dumps([{"longurl": f"https://bench.example/bulk/{tag}/{c}/{i}"}
                          for i in range(c, min(n, c + per_call))]).encode()
              for c in range(0, n, per_call)]

    def call(body: bytes) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        t0 = time.perf_counter() - origin
        answer = session.put(f"{url}/create/bulk", data=body, timeout=120,
                             headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text[:500]
        results = msgspec.json.decode(answer.content)["results"]
        bad = [r for r in results if "tinyurl" not in r]
        assert not bad, bad[:3]
        for result in results:
            started[result["tinyurl"]] = t0

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, bodies))
    return started, time.perf_counter() - origin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--links", type=int, default=100_000)
    parser.add_argument("--per-call", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--baseline-links", type=int, default=3000)
    parser.add_argument("--baseline-connections", type=int, default=32)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    database_create()
    web = None
    replicas: list[Replica] = []
    try:
        topics_ensure()
        port = free_port()
        (tmp / "prom").mkdir()
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "shortener_project.wsgi"],
            cwd=ROOT, env={**os.environ, "GUNICORN_ACCESSLOG": "",
                           "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom"),
                           "SHORTENER_CREATE_RATE_LIMIT": ""},
            stderr=subprocess.DEVNULL)
        wait_port(port)
        url = f"http://127.0.0.1:{port}"
        for name in ("replica-1", "replica-2"):
            replica = Replica(name, tmp)
            replica.env["SHORTENER_LOG_LEVEL"] = "WARNING"
            replica.start_redis()
            replica.start_consumer()
            replica.start_web()
            replicas.append(replica)
        # Warm-up: the master's workers, their producers and both consumers all running.
        warm = requests.put(f"{url}/create/bulk", timeout=60,
                            json=[{"longurl": f"https://bench.example/warm/{i}"}
                                  for i in range(200)]).json()["results"]
        wait_until(lambda: all(r.get(warm[-1]["tinyurl"]).status_code == 302 for r in replicas),
                   timeout=120, what="both replicas to serve the warm-up links")
        workers = os.environ.get("GUNICORN_WORKERS", "2")
        threads = os.environ.get("GUNICORN_THREADS", "16")
        print(f"bulk benchmark, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, load "
              f"average {os.getloadavg()[0]:.1f}; master gunicorn {workers}x{threads}, two "
              "replicas (redis-server + consume_links + web each)", flush=True)
        runs = [
            (f"baseline: PUT /create one by one, {args.baseline_connections} connections",
             lambda origin: run_single(url, args.baseline_links, args.baseline_connections,
                                       origin)),
            (f"PUT /create/bulk, {args.per_call} a call, {args.concurrency} at a time",
             lambda origin: run_bulk(url, args.links, args.per_call, args.concurrency, origin)),
        ]
        for name, run in runs[0 if args.baseline_links else 1:]:
            cpu = Cpu(web, replicas)
            cpu.start()
            origin = time.perf_counter()
            positions = Positions(replicas)
            positions.start(origin)
            try:
                started, answered = run(origin)
                report(name, len(started), started, answered, replicas, positions, cpu)
            finally:
                positions.stop.set()
                positions.thread.join()
        print(f"  (load average after: {os.getloadavg()[0]:.1f})")
    finally:
        for replica in replicas:
            replica.close()
        if web is not None:
            web.terminate()
            web.wait()
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
