#!/usr/bin/env python
"""Load generator and end-to-end checker (the first homework's task 3).

    .local/venv/bin/python tools/loadgen.py \
        --master http://127.0.0.1:8000 --replica http://127.0.0.1:8001 --replica http://127.0.0.1:8002

By default the homework's workload, sequentially: 10,000 PUT /create on the master, then
100,000 GET /<tinyurl> of those links and 100,000 GET of codes that were never issued, spread
over the replicas in turn. --concurrency N runs N clients in parallel.

Every answer is checked: 200 with a well-formed tinyurl for a create, 302 to exactly the right
longurl for a redirect, 404 for an unknown code. At the end, for each request type: the rate,
the latency percentiles, and the number of wrong answers. Exits 1 if any answer was wrong.
Talks to the servers you name only; nothing else.
"""

from __future__ import annotations

import argparse
import random
import re
import secrets
import string
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests
from tqdm import tqdm

TINY_RE = re.compile(r"[a-zA-Z0-9]{7}")
ALPHABET = string.ascii_letters + string.digits


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    wrong: int = 0
    examples: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, seconds: float, problem: str | None) -> None:
        with self.lock:
            self.latencies.append(seconds)
            if problem:
                self.wrong += 1
                if len(self.examples) < 5:
                    self.examples.append(problem)

    def summary(self) -> str:
        n = len(self.latencies)
        if not n:
            return f"{self.name:10} no requests"
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return lat[min(n - 1, int(p * n))] * 1000

        return (f"{self.name:10} {n:8d} req {n / self.elapsed:9.0f} req/s   "
                f"p50 {pct(0.50):7.2f} ms  p90 {pct(0.90):7.2f} ms  p99 {pct(0.99):7.2f} ms  "
                f"max {lat[-1] * 1000:8.2f} ms   wrong {self.wrong}")


_local = threading.local()


def session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def run(phase: Phase, items: Sequence, one: Callable, concurrency: int, progress: bool) -> None:
    bar = tqdm(total=len(items), desc=phase.name, unit="req", disable=not progress, leave=False)
    started = time.perf_counter()

    def work(item) -> None:
        t = time.perf_counter()
        try:
            problem = one(item)
        except requests.RequestException as exc:
            problem = f"{type(exc).__name__}: {exc}"
        phase.record(time.perf_counter() - t, problem)
        bar.update()

    if concurrency <= 1:
        for item in items:
            work(item)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(work, items))
    phase.elapsed = time.perf_counter() - started
    bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--master", required=True, help="the master's base URL")
    parser.add_argument("--replica", action="append", required=True,
                        help="a replica's base URL (repeat for each replica)")
    parser.add_argument("--creates", type=int, default=10_000)
    parser.add_argument("--redirects", type=int, default=100_000)
    parser.add_argument("--not-found", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=1, help="parallel clients (default 1)")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds to wait for the replicas to learn the new links")
    parser.add_argument("--seed", type=int, default=None, help="random seed (repeatable runs)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    progress = not args.no_progress and sys.stderr.isatty()
    master = args.master.rstrip("/")
    replicas = [r.rstrip("/") for r in args.replica]
    run_id = secrets.token_hex(4)

    # 1. Creates.
    links: dict[int, tuple[str, str]] = {}

    def create(i: int) -> str | None:
        longurl = f"https://loadgen.example/{run_id}/{i}?q={i * 7919}"
        r = session().put(f"{master}/create", json={"longurl": longurl}, timeout=30)
        if r.status_code != 200:
            return f"create {i}: status {r.status_code}: {r.text[:200]}"
        body = r.json()
        if body.get("longurl") != longurl or not TINY_RE.fullmatch(body.get("tinyurl", "")):
            return f"create {i}: bad body {body}"
        links[i] = (body["tinyurl"], longurl)
        return None

    creates = Phase("create")
    run(creates, range(args.creates), create, args.concurrency, progress)
    pairs = list(links.values())
    issued = {t for t, _ in pairs}

    # 2. The replicas learn new links through Kafka: wait until each serves the newest ones.
    if pairs:
        deadline = time.monotonic() + args.wait
        probe = pairs[-10:]
        for replica in replicas:
            while time.monotonic() < deadline:
                if all(session().get(f"{replica}/{t}", allow_redirects=False, timeout=10)
                       .status_code == 302 for t, _ in probe):
                    break
                time.sleep(0.2)

    # 3. Redirects of issued links, over the replicas in turn.
    def redirect(i: int) -> str | None:
        tinyurl, longurl = pairs[rng.randrange(len(pairs))]
        replica = replicas[i % len(replicas)]
        r = session().get(f"{replica}/{tinyurl}", allow_redirects=False, timeout=10)
        if r.status_code != 302 or r.headers.get("Location") != longurl:
            return f"{replica}/{tinyurl}: {r.status_code} {r.headers.get('Location')!r}"
        return None

    redirects = Phase("redirect")
    if pairs:
        run(redirects, range(args.redirects), redirect, args.concurrency, progress)

    # 4. Codes never issued: 404.
    def unknown_code() -> str:
        while True:
            code = "".join(rng.choice(ALPHABET) for _ in range(7))
            if code not in issued:
                return code

    def not_found(i: int) -> str | None:
        replica = replicas[i % len(replicas)]
        code = unknown_code()
        r = session().get(f"{replica}/{code}", allow_redirects=False, timeout=10)
        if r.status_code != 404:
            return f"{replica}/{code}: expected 404, got {r.status_code}"
        return None

    misses = Phase("not-found")
    run(misses, range(args.not_found), not_found, args.concurrency, progress)

    print(f"loadgen: master {master}, replicas {', '.join(replicas)}, "
          f"concurrency {args.concurrency}")
    wrong = 0
    for phase in (creates, redirects, misses):
        print(phase.summary())
        for example in phase.examples:
            print(f"    e.g. {example}")
        wrong += phase.wrong
    print(f"wrong answers: {wrong}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
