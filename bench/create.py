"""Benchmark: PUT /create throughput on the master, with the configured acks (all).

Usage (with the embedded services running: `bash stack/services.sh start`):
    .local/venv/bin/python bench/create.py [--seconds 10] [--connections 16]

Starts a master (gunicorn, the project's gunicorn.conf.py) on a database and topics of its own
and drives it with wrk, in one run:
  baseline: PUT /create of a longurl that already exists (HTTP, Django, one indexed read;
            no insert, no Kafka): the ceiling of the request path itself;
  new links: every PUT a new longurl (insert, commit, publish, wait for acks=all, mark).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, cleanup, database_create, setup

setup("benchc")

from bench.redirect import line, wait_port, wrk  # noqa: E402
from links.models import Link  # noqa: E402
from testkit import free_port  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
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
        print(f"/create benchmark, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
              f"wrk -t2 -c{args.connections} -d{args.seconds}s, gunicorn "
              f"{os.environ.get('GUNICORN_WORKERS', '2')}x{os.environ.get('GUNICORN_THREADS', '16')}")
        same = wrk(url, args.seconds, args.connections, tmp / "same.lua")
        print(line("baseline: existing longurl", same))
        before = Link.objects.count()
        new = wrk(url, args.seconds, args.connections, tmp / "new.lua")
        print(line("new links (insert + acks=all)", new))
        made = Link.objects.count() - before
        unpublished = Link.objects.filter(published_at__isnull=True).count()
        print(f"  {made} links made, {unpublished} left unpublished")
    finally:
        if web is not None:
            web.terminate()
            web.wait()
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
