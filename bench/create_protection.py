"""Benchmark: what /create's protection costs (rate limit counters, API key lookup).

Usage (with the embedded services running: `bash stack/services.sh start`):
    .local/venv/bin/python bench/create_protection.py [--seconds 10] [--connections 16]

First, each check's own time per call, beside a `SELECT 1` round trip. Then it starts the
master (gunicorn, the project's gunicorn.conf.py) on a database and topics of its own, once per
configuration, and drives each with wrk on the cheapest /create there is (a
longurl that already exists: one indexed read, no insert, no Kafka), where the protection's
share of the time is the largest. In one run:
  baseline: no rate limit, no key;
  rate limit, one client: every request counts against the same counter row (the worst
            case: all workers update one row), limit too high to refuse anything;
  rate limit, 1,000 clients: X-Forwarded-For spread over 1,000 addresses (one trusted proxy);
  rate limit + API key: as above, one key, plus its lookup by hash;
  rate limit in Redis: the `limits` library's own Redis storage, for comparison.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, cleanup, database_create, setup

setup("benchp")

from bench.redirect import line, wait_port, wrk  # noqa: E402
from links import protection  # noqa: E402
from testkit import free_port  # noqa: E402
from topics.provisioning import topics_ensure  # noqa: E402

SAME_LINK_LUA = """
wrk.method = "PUT"
wrk.body = '{"longurl": "https://bench.example/always-the-same"}'
wrk.headers["Content-Type"] = "application/json"
%s
"""
MANY_CLIENTS_LUA = """
wrk.method = "PUT"
wrk.body = '{"longurl": "https://bench.example/always-the-same"}'
function request()
  local headers = {["Content-Type"] = "application/json",
                   ["X-Forwarded-For"] = string.format("198.51.%d.%d", math.random(0, 3),
                                                       math.random(0, 249))}
  return wrk.format(nil, nil, headers)
end
"""
NO_LIMIT = {"SHORTENER_CREATE_RATE_LIMIT": ""}
HIGH_LIMIT = {"SHORTENER_CREATE_RATE_LIMIT": "1000000/second"}


def run(tmp: Path, env: dict[str, str], lua: str, seconds: int, connections: int) -> dict:
    port = free_port()
    prom = Path(tempfile.mkdtemp(prefix="prom-", dir=tmp))
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "shortener_project.wsgi"],
        cwd=ROOT, env={**os.environ, "GUNICORN_ACCESSLOG": "", "PROMETHEUS_MULTIPROC_DIR":
                       str(prom), **env}, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        script = tmp / "bench.lua"
        script.write_text(lua)
        url = f"http://127.0.0.1:{port}/create"
        subprocess.run(["wrk", "-t1", "-c2", "-d2s", "-s", str(script), url],
                       capture_output=True)  # warm-up (and makes the link)
        return wrk(url, seconds, connections, script)
    finally:
        web.terminate()
        web.wait()


def per_call(n: int = 3000) -> None:
    """Each check's own time per /create, in this process on the real database, beside a
    `SELECT 1` round trip (the smallest thing a request can ask PostgreSQL)."""
    from django.db import connection
    from django.test import override_settings

    from links import ratelimit, validation
    from topics import longurls

    _, token = protection.api_key_create(name="bench-per-call")

    def select_1() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    def timed(fn) -> float:
        for _ in range(100):
            fn()
        started = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - started) / n * 1e6

    with override_settings(SHORTENER_CREATE_RATE_LIMIT="1000000/second;1000000000/hour"):
        rows = [
            ("baseline: SELECT 1 round trip", select_1),
            ("longurl_check, ASCII", lambda: validation.longurl_check(
                "https://bench.example/some/path?q=1")),
            ("longurl_check, IDN + Unicode path", lambda: validation.longurl_check(
                "https://bücher.example/straße?q=ä")),
            ("longurl_problem (replica), ASCII", lambda: longurls.longurl_problem(
                "https://bench.example/some/path?q=1")),
            ("blocklist check (cached)", lambda: protection.host_blocked("www.bench.example")),
            ("API key lookup", lambda: protection.create_authenticate(
                authorization=f"Bearer {token}")),
            ("rate limit, 2 limits (PostgreSQL)",
             lambda: ratelimit.create_rate_limit_hit(client="addr:198.51.100.1")),
        ]
        print(f"per call, {n} calls each:")
        for name, fn in rows:
            print(f"  {name:38} {timed(fn):9.1f} us", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-protection-"))
    database_create()
    try:
        topics_ensure()
        _, token = protection.api_key_create(name="bench")
        one = SAME_LINK_LUA % ""
        keyed = SAME_LINK_LUA % f'wrk.headers["Authorization"] = "Bearer {token}"'
        from django.conf import settings

        # The local stack's first Redis by default (settings.REDIS_URL follows its port).
        redis = {**HIGH_LIMIT, "SHORTENER_RATE_LIMIT_STORAGE": os.environ.get(
            "BENCH_REDIS_URL", settings.REDIS_URL)}
        per_call()
        print(f"/create protection benchmark, {datetime.now():%Y-%m-%d %H:%M}, "
              f"{os.cpu_count()} cores, wrk -t2 -c{args.connections} -d{args.seconds}s, "
              "existing longurl")
        for name, env, lua in (
            ("baseline: no limit, no key", NO_LIMIT, one),
            ("rate limit (PostgreSQL), one client", HIGH_LIMIT, one),
            ("rate limit (PostgreSQL), 1,000 clients",
             {**HIGH_LIMIT, "SHORTENER_TRUSTED_PROXIES": "1"}, MANY_CLIENTS_LUA),
            ("rate limit (PostgreSQL) + API key", HIGH_LIMIT, keyed),
            ("rate limit (Redis), one client", redis, one),
            ("baseline again", NO_LIMIT, one),
        ):
            print(line(name, run(tmp, env, lua, args.seconds, args.connections)), flush=True)
    finally:
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
