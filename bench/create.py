"""Benchmark: PUT /create throughput on the master, with the configured acks (all).

Usage (with the embedded services running: `bash stack/services.sh start`):
    .local/venv/bin/python bench/create.py [--seconds 10] [--connections 32]

Starts a master (gunicorn, the project's gunicorn.conf.py) on a database and topics of its own,
the rate limit off (one client at full speed), and drives it with wrk, in one run:
  baseline: PUT /create of a longurl that already exists (HTTP, the checks, one indexed read in
            a batch; no insert, no Kafka): the ceiling of the request path itself;
  new links: every PUT a new longurl (insert, durable commit, publish, wait for acks=all, mark),
            printed with its ratio to the baseline of the same run (the machine may be shared);
  single: new links one at a time on one connection, nothing else in flight: the latency of a
            request alone (a batch of one; it must not wait for company).
For each: requests/s, p50/p90/p99, the web workers' CPU per request, and the batches' mean size
(shortener_create_batch_size, links/batching.py).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, cleanup, cpu_seconds, database_create, setup

setup("benchc")

from bench.redirect import line, need, wait_port, wrk  # noqa: E402
from links.models import Link  # noqa: E402
from testkit import free_port, scrape  # noqa: E402
from topics.provisioning import topics_ensure  # noqa: E402

NEW_LINKS_LUA = """
local n = 0
local id = 0
function setup(thread) id = id + 1; thread:set("tid", id) end
function init(args) math.randomseed(os.time() * 1000 + tid) end
function request()
  n = n + 1
  local body = string.format('{"longurl": "https://bench.example/%d/%d/%d"}',
                             tid, math.random(1, 2^30), n)
  return wrk.format("PUT", "/create", {["Content-Type"] = "application/json"}, body)
end
"""
SAME_LINK_LUA = """
wrk.method = "PUT"
wrk.body = '{"longurl": "https://bench.example/always-the-same"}'
wrk.headers["Content-Type"] = "application/json"
"""


def workers_cpu(server_pid: int) -> float:
    """CPU seconds of the gunicorn workers (the arbiter's children) so far."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    return sum(cpu_seconds(int(pid)) for pid in children)


def batches(port: int) -> tuple[float, float]:
    """(batches run, creates in them) so far, from the master's /metrics."""
    samples = scrape(f"http://127.0.0.1:{port}/metrics")
    def total(name: str) -> float:
        return sum(v for (metric, _), v in samples.items() if metric == name)

    return (total("shortener_create_batch_size_count"),
            total("shortener_create_batch_size_sum"))


def measured(port: int, pid: int, run) -> tuple[dict, str]:
    """run()'s wrk figures, and the workers' CPU a request and the mean batch size meanwhile."""
    cpu, (count, total) = workers_cpu(pid), batches(port)
    result = run()
    cpu, (count2, total2) = workers_cpu(pid) - cpu, batches(port)
    requests = result["requests"]
    size = (total2 - total) / (count2 - count) if count2 > count else float("nan")
    return result, (f"     workers' CPU {cpu / max(requests, 1) * 1e3:.2f} ms a request,"
                    f" {count2 - count:.0f} batches of {size:.1f} on average")


def single(port: int, n: int) -> list[float]:
    """Latencies (ms) of n new links created one after the other on one connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for i in range(n):
        body = f'{{"longurl": "https://bench.example/single/{time.time_ns()}/{i}"}}'
        started = time.perf_counter()
        conn.request("PUT", "/create", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        times.append((time.perf_counter() - started) * 1e3)
        assert response.status == 200, response.status
    conn.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--single", type=int, default=200, help="requests of the single run")
    args = parser.parse_args()
    need("wrk", "wrk")  # as bench/redirect.py: installed when root and missing
    tmp = Path(tempfile.mkdtemp(prefix="bench-create-"))
    database_create()
    web = None
    try:
        topics_ensure()
        port = free_port()
        (tmp / "prom").mkdir()
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "shortener_project.wsgi"],
            cwd=ROOT, env={**os.environ, "GUNICORN_ACCESSLOG": "",
                           "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom"),
                           # One client at full speed: measured without the per-client limits
                           # (their cost: bench/create_protection.py).
                           "SHORTENER_CREATE_RATE_LIMIT": ""},
            stderr=subprocess.DEVNULL)
        wait_port(port)
        (tmp / "same.lua").write_text(SAME_LINK_LUA)
        (tmp / "new.lua").write_text(NEW_LINKS_LUA)
        url = f"http://127.0.0.1:{port}/create"
        subprocess.run(["wrk", "-t1", "-c2", "-d2s", "-s", str(tmp / "same.lua"), url],
                       capture_output=True)  # warm-up, and makes the "same" link
        load = Path("/proc/loadavg").read_text().split()[0]
        print(f"/create benchmark, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores "
              f"(load average {load} before), wrk -t2 -c{args.connections} -d{args.seconds}s, "
              f"gunicorn {os.environ.get('GUNICORN_WORKERS', '2')} workers")
        same, cpu_line = measured(port, web.pid, lambda: wrk(url, args.seconds, args.connections,
                                                             tmp / "same.lua"))
        print(line("baseline: existing longurl", same))
        print(cpu_line)
        before = Link.objects.count()
        new, cpu_line = measured(port, web.pid, lambda: wrk(url, args.seconds, args.connections,
                                                            tmp / "new.lua"))
        print(line("new links (insert + acks=all)", new))
        print(cpu_line)
        made = Link.objects.count() - before
        unpublished = Link.objects.filter(published_at__isnull=True).count()
        print(f"     {made} links made, {unpublished} left unpublished; "
              f"{new['rate'] / same['rate']:.2f} x the baseline's rate")
        count, total = batches(port)
        times = single(port, args.single)
        count, total = batches(port)[0] - count, batches(port)[1] - total
        # (No CPU a request here: at one request at a time, the workers' idle work, such as
        # the Kafka client's polling, is most of it.)
        print(f"  {'single: one new link at a time':44.70} p50 {statistics.median(times):6.2f} ms"
              f"  p99 {statistics.quantiles(times, n=100)[98]:6.2f} ms"
              f"  max {max(times):6.2f} ms ({len(times)} requests, {count:.0f} batches of "
              f"{total / max(count, 1):.1f})")
    finally:
        if web is not None:
            web.terminate()
            web.wait()
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
