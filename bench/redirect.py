"""Benchmark: redirect throughput and latency of one replica, beside its ceilings.

Usage: .local/venv/bin/python bench/redirect.py [--seconds 10] [--connections 32] [--rounds 3]
       [--only-asgi] [--no-ceilings] [--user-agent UA]  (before/after: the replica alone, its CPU)
(installs wrk and nginx-light with apt-get when root and missing; needs nothing else running)

In one run, on this machine, with wrk as the client, `--rounds` times over (the machine may be
shared: the summary gives each figure's best and its spread over the rounds):
  1. nginx `return 302` (2 workers): the ceiling for an HTTP redirect here;
  2. a replica started exactly as `make up` starts it (stack/Procfile: gunicorn with the
     project's gunicorn.conf.py, shortener_project.asgi, the replica role's defaults),
     redirecting a link from its own Redis and counting every click: its maximum rate, then its
     latency at about half that rate (wrk paced by a random Lua delay(), as wrk2 is not
     packaged here);
     after each, the link's click counter beside the redirects wrk completed (they must agree
     within the connections still in flight when wrk stopped: every redirect served is counted);
  3. for comparison, the same replica through Django's view under gunicorn's gthread worker (the
     replica's server before the ASGI path), and, when granian is installed
     (`pip install granian==2.8.7`; not a dependency), the ASGI application under granian;
  4. redis-benchmark against the same Redis: GET (the store's ceiling for a plain lookup), and
     the click script itself, pipelined as the replica sends it (Redis' ceiling for counted
     clicks, on its one core, whatever serves HTTP in front of it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from testkit import free_port, port_open, wait_until  # noqa: E402

USER = f"benchr{int(time.time())}"
TINYURL = "Bench01"


def need(tool: str, package: str) -> None:
    if shutil.which(tool):
        return
    if os.geteuid() != 0:
        sys.exit(f"{tool} is missing: apt-get install {package}")
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def wait_port(port: int) -> None:
    wait_until(lambda: port_open(port), timeout=20, what=f"a listener on {port}")


# The User-Agent wrk sends to the replicas (--user-agent; wrk sends none by default). A replica
# checks it against the bot list (redirects/bots.py): the same one every request is the cache's
# hit, what real traffic nearly always is.
USER_AGENT: str | None = None


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` and its children, from /proc (Linux): the
    replica's gunicorn arbiter and workers."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        this = int(stat.parent.name)
        if this == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def wrk(url: str, seconds: int, connections: int, script: Path | None = None) -> dict:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if USER_AGENT is not None:
        cmd[1:1] = ["-H", f"User-Agent: {USER_AGENT}"]
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
    done = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rate": rate, **lat, "bad": int(non2xx.group(1)) if non2xx else 0,
            "errors": errors.group(1) if errors else "", "requests": done,
            "connections": connections}


def line(name: str, r: dict) -> str:
    return (f"  {name:44.70} {r['rate']:9.0f} req/s   p50 {r['50']:6.2f} ms  p90 {r['90']:6.2f} ms"
            f"  p99 {r['99']:6.2f} ms" + (f"   non-3xx {r['bad']}" if r["bad"] else "")
            + (f"   socket errors: {r['errors']}" if r["errors"] else ""))


class Replica:
    """A replica web server on its own Redis, started as named (see the module's docstring)."""

    def __init__(self, kind: str, redis_port: int, tmp: Path, workers: int | None = None) -> None:
        self.kind = kind
        self.redis_port = redis_port
        self.port = free_port()
        prom = self.prom = tmp / f"prom-{kind}"
        prom.mkdir()
        # The environment stack/Procfile gives a replica, on this benchmark's Redis and prefix.
        env = {**os.environ, "SHORTENER_ROLE": "replica", "SHORTENER_USER": USER,
               "SHORTENER_NODE_ID": "bench", "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
               "PROMETHEUS_MULTIPROC_DIR": str(prom)}
        if workers:  # otherwise gunicorn.conf.py's default, as make up runs it
            env["GUNICORN_WORKERS"] = str(workers)
        venv_bin = Path(sys.executable).parent
        if kind == "make-up":  # stack/Procfile's replica line, with this port
            cmd = [str(venv_bin / "gunicorn"), "-b", f"127.0.0.1:{self.port}",
                   "shortener_project.asgi"]
        elif kind == "wsgi":  # the replica's server before the ASGI path
            cmd = [str(venv_bin / "gunicorn"), "-b", f"127.0.0.1:{self.port}",
                   "--worker-class", "gthread", "--threads", "4", "shortener_project.wsgi"]
        elif kind == "granian":
            cmd = [str(venv_bin / "granian"), "--interface", "asgi", "--workers", "2",
                   "--loop", "uvloop", "--host", "127.0.0.1", "--port", str(self.port),
                   "--no-ws", "--log-level", "warning", "shortener_project.asgi:application"]
        else:
            raise ValueError(kind)
        # A replica writes no access lines by default (gunicorn.conf.py); the servers' own
        # start and stop lines go nowhere.
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}/{TINYURL}"
        subprocess.run(["wrk", "-t1", "-c4", "-d2s", self.url], capture_output=True)  # warm-up

    def counted(self) -> int:
        """The link's clicks counted in the current counter incarnation (this Redis never
        restarts during the run: one incarnation throughout)."""
        def get(key: str) -> str:
            return subprocess.run(["redis-cli", "-p", str(self.redis_port), "GET", key],
                                  capture_output=True, text=True, check=True).stdout.strip()

        incarnation = get(f"{USER}:clicks:incarnation")
        return int(get(f"{USER}:clicks:count:{incarnation}:{TINYURL}") or 0) if incarnation else 0

    def served_per_worker(self) -> dict[str, float]:
        """Redirects each worker process answered so far, from its own metrics file."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        served = {}
        for path in sorted(self.prom.glob("histogram_*.db")):
            one = self.prom.parent / f"one-{path.stem}"
            one.mkdir(exist_ok=True)
            shutil.copy(path, one / path.name)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(one))
            served[path.stem.split("_")[-1]] = registry.get_sample_value(
                "shortener_request_duration_seconds_count",
                {"endpoint": "redirect", "method": "GET", "status": "302"}) or 0
            shutil.rmtree(one)
        return served

    def measure(self, seconds: int, connections: int, script: Path | None = None) -> dict:
        workers_before = self.served_per_worker()
        before = self.counted()
        cpu = tree_cpu(self.proc.pid)
        result = wrk(self.url, seconds, connections, script)
        # The workers' CPU a redirect: on a shared machine, steadier than the rate.
        result["cpu_us"] = (tree_cpu(self.proc.pid) - cpu) / max(result["requests"], 1) * 1e6
        # The server still answers (and counts) what was in flight when wrk stopped: read the
        # counter once it has stopped moving.
        def settled() -> bool:
            now = self.counted()
            time.sleep(0.2)
            return self.counted() == now

        wait_until(settled, timeout=10, what="the click counter to settle")
        result["counted"] = self.counted() - before
        served = {pid: n - workers_before.get(pid, 0)
                  for pid, n in self.served_per_worker().items()}
        result["per_worker"] = sorted(served.values(), reverse=True)
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def counted_line(r: dict) -> str:
    extra = r["counted"] - r["requests"]
    verdict = ("every redirect counted" if 0 <= extra <= r["connections"]
               else "MISMATCH: redirects served but not counted" if extra < 0
               else "MISMATCH: more counted than wrk's requests and connections in flight")
    return (f"  {'':44} counter +{r['counted']} for {r['requests']} redirects wrk completed "
            f"({extra:+d}; {r['connections']} connections): {verdict}")


def paced(replica: Replica, tmp: Path, rate: float, seconds: int) -> dict:
    """wrk at about `rate` requests/s: every connection waits a random 1-7 ms (4 on average)
    after each answer, so that the connections do not fall into step and arrive in bursts
    (wrk's delay() takes whole milliseconds), with as many connections as a 2-second trial
    says give that rate."""
    script = tmp / "paced.lua"
    script.write_text("function delay() return math.random(1, 7) end\n")
    connections = max(2, round(rate * 4 / 1000))
    trial = wrk(replica.url, 2, connections, script)
    connections = max(2, round(connections * rate / trial["rate"]))
    result = replica.measure(seconds, connections, script)
    result["target"] = rate
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None,
                        help="the ASGI replica's worker processes (default: as make up runs it)")
    parser.add_argument("--only-asgi", action="store_true",
                        help="skip the former WSGI server and granian")
    parser.add_argument("--no-ceilings", action="store_true",
                        help="skip nginx and redis-benchmark (before/after comparisons)")
    parser.add_argument("--user-agent", help="the User-Agent header wrk sends to the replica")
    args = parser.parse_args()
    global USER_AGENT
    USER_AGENT = args.user_agent
    need("wrk", "wrk")
    need("nginx", "nginx-light")
    granian = importlib.util.find_spec("granian") is not None
    tmp = Path(tempfile.mkdtemp(prefix="bench-redirect-"))
    procs: list[subprocess.Popen] = []
    rows: dict[str, list[dict]] = {}

    def record(name: str, result: dict) -> None:
        rows.setdefault(name, []).append(result)
        shown = name
        if "target" in result:
            shown = f"{name} (-c{result['connections']}, {result['target']:.0f}/s wanted)"
        print(line(shown, result), flush=True)
        if "counted" in result:
            print(counted_line(result), flush=True)
        if "cpu_us" in result:
            print(f"  {'':44} the replica's CPU: {result['cpu_us']:.1f} µs a redirect",
                  flush=True)
        if result.get("per_worker"):
            total = sum(result["per_worker"]) or 1
            print(f"  {'':44} served per worker process: "
                  + " / ".join(f"{n / total * 100:.0f} %" for n in result["per_worker"]),
                  flush=True)

    try:
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
        redis_port = free_port()
        procs.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind",
                                       "127.0.0.1", "--save", "", "--appendonly", "no",
                                       "--dir", str(tmp)], stdout=subprocess.DEVNULL))
        wait_port(redis_port)
        # The link as consume_links writes it (keys.LinkValue: version 1, no expiry, active).
        subprocess.run(["redis-cli", "-p", str(redis_port), "SET", f"{USER}:link:{TINYURL}",
                        "1||https://example.com/benchmark"], check=True, stdout=subprocess.DEVNULL)
        # The click script's keys for another link of the same shape, for redis-benchmark.
        os.environ.update(SHORTENER_ROLE="replica", SHORTENER_USER=USER,
                          DJANGO_SETTINGS_MODULE="shortener_project.settings")
        import django

        django.setup()
        from redirects.counting import CLICK_SHA, click_keys_args

        import redis

        from testkit import redis_links_ready

        # What consume_links leaves once caught up: else a Redis no consumer has checked
        # answers every link 503 (redirects/incarnation.py).
        redis_links_ready(redis.Redis(port=redis_port))
        click_keys, click_args = click_keys_args("Bench02")
        subprocess.run(["redis-cli", "-p", str(redis_port), "SET", click_keys[0],
                        "1||https://example.com/benchmark"], check=True, stdout=subprocess.DEVNULL)
        # Not loaded here: the first replica loads the click script after its NOSCRIPT and the
        # counter incarnation check, as in production, before redis-benchmark runs it by sha.
        sha = CLICK_SHA

        print(f"redirect benchmark, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
              f"wrk -t2 -c{args.connections} -d{args.seconds}s on the same machine, "
              f"replica workers: {args.workers or 'as make up'}, "
              f"{args.rounds} rounds; baselines measured in the same run", flush=True)
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_}", flush=True)
            ngx = None
            if not args.no_ceilings:
                ngx = wrk(f"http://127.0.0.1:{nginx_port}/x", args.seconds, args.connections)
                record("nginx return 302 (ceiling)", ngx)

            kinds = ["make-up"] + ([] if args.only_asgi else
                                   ["wsgi"] + (["granian"] if granian else []))
            for kind in kinds:
                (tmp / f"r{round_}").mkdir(exist_ok=True)
                replica = Replica(kind, redis_port, tmp / f"r{round_}",
                                  args.workers if kind == "make-up" else None)
                try:
                    name = {"make-up": "replica as make up runs it (ASGI)",
                            "wsgi": "  before: Django view, gthread (WSGI)",
                            "granian": "  the ASGI app under granian"}[kind]
                    full = replica.measure(args.seconds, args.connections)
                    record(name, full)
                    if kind == "make-up" and ngx is not None:
                        print(f"  {'':44} replica / nginx: "
                              f"{full['rate'] / ngx['rate'] * 100:.1f} %", flush=True)
                    if kind != "wsgi":
                        # About half the maximum rate: latency when the server is not saturated.
                        record(f"{name.strip()} at ~half rate",
                               paced(replica, tmp, full["rate"] / 2, args.seconds))
                finally:
                    replica.stop()

            if not args.no_ceilings:
                out = subprocess.run(["redis-benchmark", "-p", str(redis_port), "-t", "get", "-n",
                                      "200000", "-c", str(args.connections), "-q"],
                                     capture_output=True, text=True, check=True).stdout
                m = re.search(r"GET: ([\d.]+) requests per second, p50=([\d.]+) msec", out)
                rows.setdefault("redis-benchmark GET (store ceiling)", []).append(
                    {"rate": float(m.group(1))})
                print(f"  {'redis-benchmark GET (store ceiling)':44} "
                      f"{float(m.group(1)):9.0f} req/s   p50 {float(m.group(2)):6.2f} ms",
                      flush=True)
                # The click script itself, as the replica sends it (pipelined): Redis' ceiling
                # for counted clicks, on one core, whatever the web servers in front of it.
                out = subprocess.run(["redis-benchmark", "-p", str(redis_port), "-n", "400000",
                                      "-c", str(args.connections), "-P", "16", "-q", "EVALSHA",
                                      sha,
                                      *map(str, [len(click_keys), *click_keys, *click_args])],
                                     capture_output=True, text=True, check=True).stdout
                m = re.search(r"EVALSHA.*?: ([\d.]+) requests per second", out)
                rows.setdefault("redis-benchmark click script (-P 16)", []).append(
                    {"rate": float(m.group(1))})
                print(f"  {'redis-benchmark click script (-P 16)':44} {float(m.group(1)):9.0f} "
                      "req/s", flush=True)

        print(f"summary over {args.rounds} rounds: best (min-max)")
        for name, results in rows.items():
            rates = [r["rate"] for r in results]
            text = (f"  {name.strip():44} {max(rates):9.0f} req/s "
                    f"({min(rates):.0f}-{max(rates):.0f})")
            if "99" in results[0]:
                p99 = [r["99"] for r in results]
                text += f"   p99 {min(p99):.2f} ms ({min(p99):.2f}-{max(p99):.2f})"
                p50 = [r["50"] for r in results]
                text += f"   p50 {statistics.median(p50):.2f} ms (median)"
            if "cpu_us" in results[0]:
                cpu = [r["cpu_us"] for r in results]
                text += f"   CPU {min(cpu):.1f}-{max(cpu):.1f} µs a redirect"
            if "counted" in results[0]:
                text += "   counted: " + ("all" if all(
                    0 <= r["counted"] - r["requests"] <= r["connections"] for r in results)
                    else "MISMATCH")
            print(text)
        if not args.no_ceilings:
            share = [r["rate"] / n["rate"] * 100 for r, n in
                     zip(rows["replica as make up runs it (ASGI)"],
                         rows["nginx return 302 (ceiling)"])]
            print(f"  replica / nginx in the same round: best {max(share):.1f} % "
                  f"({min(share):.1f}-{max(share):.1f} %)")
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
