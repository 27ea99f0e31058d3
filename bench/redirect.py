"""Benchmark: redirect throughput and latency of one replica, beside its ceilings.

Usage: .local/venv/bin/python bench/redirect.py [--seconds 10] [--connections 32]
(installs wrk and nginx-light with apt-get when root and missing; needs nothing else running)

In one run, on this machine, with wrk as the client:
  1. nginx `return 302` (2 workers): the ceiling for an HTTP redirect here;
  2. a replica (gunicorn, the project's gunicorn.conf.py) redirecting a link from its own Redis,
     counting every click: its maximum rate, then its latency at half that rate
     (wrk paced by a Lua delay(), as wrk2 is not packaged here);
  3. redis-benchmark GET against the same Redis: the store's ceiling.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support import free_port, port_open, wait_until  # noqa: E402

USER = f"benchr{int(time.time())}"


def need(tool: str, package: str) -> None:
    if shutil.which(tool):
        return
    if os.geteuid() != 0:
        sys.exit(f"{tool} is missing: apt-get install {package}")
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def wait_port(port: int) -> None:
    wait_until(lambda: port_open(port), timeout=20, what=f"a listener on {port}")


def wrk(url: str, seconds: int, connections: int, script: Path | None = None) -> dict:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if script:
        cmd[1:1] = ["-s", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for p in ("50", "90", "99"):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        lat[p] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rate": rate, **lat, "bad": int(non2xx.group(1)) if non2xx else 0,
            "errors": errors.group(1) if errors else ""}


def line(name: str, r: dict) -> str:
    return (f"  {name:38} {r['rate']:9.0f} req/s   p50 {r['50']:6.2f} ms  p90 {r['90']:6.2f} ms"
            f"  p99 {r['99']:6.2f} ms" + (f"   non-3xx {r['bad']}" if r["bad"] else "")
            + (f"   socket errors: {r['errors']}" if r["errors"] else ""))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    need("wrk", "wrk")
    need("nginx", "nginx-light")
    tmp = Path(tempfile.mkdtemp(prefix="bench-redirect-"))
    procs: list[subprocess.Popen] = []
    try:
        # 1. nginx
        nginx_port = free_port()
        (tmp / "nginx.conf").write_text(f"""
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{nginx_port}; location / {{ return 302 https://example.com/; }} }}
}}
""")
        procs.append(subprocess.Popen(["nginx", "-c", str(tmp / "nginx.conf"), "-g",
                                       "daemon off;"]))
        wait_port(nginx_port)

        # 2. a replica with its own Redis and one link
        redis_port, web_port = free_port(), free_port()
        procs.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind",
                                       "127.0.0.1", "--save", "", "--appendonly", "no",
                                       "--dir", str(tmp)], stdout=subprocess.DEVNULL))
        wait_port(redis_port)
        subprocess.run(["redis-cli", "-p", str(redis_port), "SET", f"{USER}:link:Bench01",
                        "1||https://example.com/benchmark"], check=True, stdout=subprocess.DEVNULL)
        env = {**os.environ, "SHORTENER_ROLE": "replica", "SHORTENER_USER": USER,
               "SHORTENER_NODE_ID": "bench", "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
               "GUNICORN_ACCESSLOG": "", "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom")}
        (tmp / "prom").mkdir()
        procs.append(subprocess.Popen([sys.executable, "-m", "gunicorn", "-b",
                                       f"127.0.0.1:{web_port}", "shortener_project.wsgi"],
                                      cwd=ROOT, env=env, stderr=subprocess.DEVNULL))
        wait_port(web_port)
        subprocess.run(["wrk", "-t1", "-c4", "-d2s", f"http://127.0.0.1:{web_port}/Bench01"],
                       capture_output=True)  # warm-up

        print(f"redirect benchmark, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
              f"wrk -t2 -c{args.connections} -d{args.seconds}s on the same machine")
        ngx = wrk(f"http://127.0.0.1:{nginx_port}/x", args.seconds, args.connections)
        print(line("nginx return 302 (ceiling)", ngx))
        rep = wrk(f"http://127.0.0.1:{web_port}/Bench01", args.seconds, args.connections)
        print(line("replica GET /<tinyurl> (counted)", rep))
        print(f"  replica / nginx: {rep['rate'] / ngx['rate'] * 100:.0f} %")

        # Latency at half the replica's maximum rate: each connection waits between requests.
        half = rep["rate"] / 2
        conns = 8
        delay_ms = max(1, int(conns * 1000 / half))
        script = tmp / "paced.lua"
        script.write_text(f"function delay() return {delay_ms} end\n")
        paced = wrk(f"http://127.0.0.1:{web_port}/Bench01", args.seconds, conns, script)
        print(line(f"replica at ~half rate (target {half:.0f}/s)", paced))

        out = subprocess.run(["redis-benchmark", "-p", str(redis_port), "-t", "get", "-n",
                              "200000", "-c", str(args.connections), "-q"],
                             capture_output=True, text=True, check=True).stdout
        m = re.search(r"GET: ([\d.]+) requests per second, p50=([\d.]+) msec", out)
        print(f"  {'redis-benchmark GET (store ceiling)':38} {float(m.group(1)):9.0f} req/s   "
              f"p50 {float(m.group(2)):6.2f} ms")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
