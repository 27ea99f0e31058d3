"""The assignment's topology on one machine: three hosts as Linux network namespaces.

    bridge sh<id>br 10.231.0.1/24 (the "network")  - Kafka and PostgreSQL listen here
      |- namespace <id>m   10.231.0.10  master:  gunicorn :8000, consume_clicks, outbox relay
      |- namespace <id>r1  10.231.0.11  replica: redis :26379, consume_links, report_clicks,
      |                                          gunicorn :8000
      |- namespace <id>r2  10.231.0.12  replica: the same

Each replica's Redis is on port 26379 inside its own namespace, as on separate hosts; node ids
are the hosts' addresses (`hostname -I` inside a namespace), so consumer groups end with the IP.
The test process talks to every host over the bridge, as a client on the network would.
Needs root (ip netns, veth, bridge). Everything it makes is removed by close().
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2
import requests

from testkit import ROOT, wait_until

SUBNET = "10.231.0"
BRIDGE_IP = f"{SUBNET}.1"
KAFKA_PORT, KAFKA_CONTROLLER_PORT, PG_PORT = 19092, 19093, 15432


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


class Host:
    def __init__(self, cluster: NetnsCluster, name: str, ip: str) -> None:
        self.cluster = cluster
        self.name = name
        self.ns = f"{cluster.id}{name}"
        self.ip = ip
        self.veth = f"{cluster.id}{name}v"  # the root side of its cable
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return f"http://{self.ip}:8000"

    def start(self, what: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        assert what not in self.procs or self.procs[what].poll() is not None, f"{what} runs"
        log = open(self.cluster.dir / f"{self.name}-{what}.log", "ab")
        self.procs[what] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *cmd], cwd=ROOT,
            env={**self.cluster.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, what: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        proc = self.procs.get(what)
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else 0
        proc.send_signal(sig)
        return proc.wait(timeout)

    def log(self, what: str) -> str:
        return (self.cluster.dir / f"{self.name}-{what}.log").read_text(errors="replace")

    def link(self, up: bool) -> None:
        """Plug or unplug this host's network cable."""
        sh("ip", "link", "set", self.veth, "up" if up else "down")


class NetnsCluster:
    def __init__(self, data_dir: Path, user: str) -> None:
        self.id = "s" + uuid.uuid4().hex[:4]  # short: interface names have 15 characters
        self.dir = data_dir / f"netns-{self.id}"
        self.dir.mkdir(parents=True)
        self.user = user
        self.bridge = f"{self.id}br"
        self.master = Host(self, "m", f"{SUBNET}.10")
        self.r1 = Host(self, "r1", f"{SUBNET}.11")
        self.r2 = Host(self, "r2", f"{SUBNET}.12")
        self.replicas = [self.r1, self.r2]
        self.hosts = [self.master, *self.replicas]
        self.stack_env = {**os.environ, "SHORTENER_DATA": str(self.dir / "stack"),
                          "SHORTENER_KAFKA_LIBS": str(ROOT / ".local" / "kafka" / "libs"),
                          "SHORTENER_KAFKA_HOST": BRIDGE_IP,
                          "SHORTENER_KAFKA_PORT": str(KAFKA_PORT),
                          "SHORTENER_KAFKA_CONTROLLER_PORT": str(KAFKA_CONTROLLER_PORT),
                          "SHORTENER_PG_PORT": str(PG_PORT),
                          "SHORTENER_PG_LISTEN": f"127.0.0.1,{BRIDGE_IP}",
                          "SHORTENER_PG_TRUST_CIDR": f"{SUBNET}.0/24"}
        self.database = user
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SHORTENER_", "DATABASE_", "REDIS_", "KAFKA_"))}
        self.env.update({
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "SHORTENER_USER": user,
            "KAFKA_BOOTSTRAP_SERVERS": f"{BRIDGE_IP}:{KAFKA_PORT}",
            "DATABASE_URL": f"postgres://postgres@{BRIDGE_IP}:{PG_PORT}/{user}",
            "REDIS_URL": "redis://127.0.0.1:26379/0",
            "DJANGO_SECRET_KEY": "netns-test-only",
            "DJANGO_ALLOWED_HOSTS": ",".join(h.ip for h in self.hosts),
            "GUNICORN_WORKERS": "1",
            # Short flush so that the scenarios settle fast.
            "SHORTENER_CLICKS_FLUSH_SECONDS": "1",
        })

    # --- the network -----------------------------------------------------------------------

    def build(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for host in self.hosts:
            sh("ip", "netns", "add", host.ns)
            sh("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns",
               host.ns)
            sh("ip", "link", "set", host.veth, "master", self.bridge)
            sh("ip", "link", "set", host.veth, "up")
            for cmd in (["ip", "addr", "add", f"{host.ip}/24", "dev", "eth0"],
                        ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "lo", "up"],
                        ["ip", "route", "add", "default", "via", BRIDGE_IP]):
                sh("ip", "netns", "exec", host.ns, *cmd)

    # --- shared services: Kafka and PostgreSQL on the network ------------------------------

    def kafka(self, action: str) -> None:
        subprocess.run(["bash", "stack/kafka.sh", action], cwd=ROOT, env=self.stack_env,
                       check=True, capture_output=True)

    def postgres(self, action: str, *args: str) -> None:
        subprocess.run(["bash", "stack/postgres.sh", action, *args], cwd=ROOT,
                       env=self.stack_env, check=True, capture_output=True)

    def sql(self, query: str, *params) -> list[tuple]:
        conn = psycopg2.connect(host=BRIDGE_IP, port=PG_PORT, user="postgres",
                                dbname=self.database, connect_timeout=5)
        try:
            with conn, conn.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchall() if cursor.description else []
        finally:
            conn.close()

    # --- the product ---------------------------------------------------------------------

    def manage(self, host: Host, *args: str, role: str = "master") -> None:
        subprocess.run(["ip", "netns", "exec", host.ns, sys.executable, "manage.py", *args],
                       cwd=ROOT, env={**self.env, "SHORTENER_ROLE": role}, check=True,
                       capture_output=True)

    def start_master(self) -> None:
        env = {"SHORTENER_ROLE": "master", "GUNICORN_BIND": f"{self.master.ip}:8000",
               # The scenarios create links in bursts from one client (the test process) to
               # test replication and faults, not /create's rate limits (tested on their own).
               "SHORTENER_CREATE_RATE_LIMIT": ""}
        self.master.start("web", [sys.executable, "-m", "gunicorn", "shortener_project.wsgi"], env)
        self.master.start("clicks", [sys.executable, "manage.py", "consume_clicks"], env)
        self.master.start("outbox", [sys.executable, "manage.py", "republish_links",
                                     "--pending", "--follow", "--interval", "1"], env)

    def start_redis(self, host: Host) -> None:
        # No persistence: the scenarios restart it empty on purpose.
        host.start("redis", ["redis-server", "--port", "26379", "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(self.dir)])

    def start_replica(self, host: Host) -> None:
        env = {"SHORTENER_ROLE": "replica", "GUNICORN_BIND": f"{host.ip}:8000"}
        self.start_redis(host)
        host.start("links", [sys.executable, "manage.py", "consume_links"], env)
        host.start("report", [sys.executable, "manage.py", "report_clicks"], env)
        host.start("web", [sys.executable, "-m", "gunicorn", "shortener_project.asgi"], env)

    def restart(self, host: Host, what: str, sig: int = signal.SIGKILL) -> None:
        host.stop(what, sig)
        role = "master" if host is self.master else "replica"
        env = {"SHORTENER_ROLE": role}
        commands = {"links": "consume_links", "report": "report_clicks",
                    "clicks": "consume_clicks"}
        if what == "redis":
            self.start_redis(host)
        else:
            host.start(what, [sys.executable, "manage.py", commands[what]], env)

    def up(self) -> None:
        self.build()
        self.postgres("start")
        self.postgres("createdb", self.database)
        self.kafka("start")
        self.manage(self.master, "migrate", "--no-input")
        self.manage(self.master, "kafka_topics")
        self.start_master()
        for host in self.replicas:
            self.start_replica(host)
        for host in self.hosts:
            wait_until(lambda h=host: requests.get(f"{h.url}/readyz", timeout=2).ok,
                       timeout=60, what=f"{host.name} ready")

    def close(self) -> None:
        for host in self.hosts:
            for proc in host.procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        for action in (self.kafka, self.postgres):
            try:
                action("stop")
            except subprocess.CalledProcessError:
                pass
        for host in self.hosts:
            sh("ip", "netns", "del", host.ns, check=False)
            sh("ip", "link", "del", host.veth, check=False)
        sh("ip", "link", "del", self.bridge, check=False)

    # --- observations -----------------------------------------------------------------------

    def create(self, longurl: str) -> requests.Response:
        return requests.put(f"{self.master.url}/create", json={"longurl": longurl}, timeout=30)

    def served(self, host: Host, links: dict[str, str]) -> int:
        """How many of `links` the replica redirects correctly (asked over the network, with
        HEAD: answered like GET but not counted as a click)."""
        session = requests.Session()
        ok = 0
        for tinyurl, longurl in links.items():
            r = session.head(f"{host.url}/{tinyurl}", allow_redirects=False, timeout=5)
            ok += r.status_code == 302 and r.headers.get("Location") == longurl
        session.close()
        return ok

    def clicks_recorded(self) -> dict[str, int]:
        rows = self.sql("SELECT node, sum(count) FROM links_clickcounter GROUP BY node")
        return {node: int(n) for node, n in rows}

    def redis_cli(self, host: Host, *args: str) -> str:
        return sh("ip", "netns", "exec", host.ns, "redis-cli", "-p", "26379", *args).stdout.strip()

    def clicks_topic_end(self) -> int:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=f"{BRIDGE_IP}:{KAFKA_PORT}")
        try:
            tp = TopicPartition(f"{self.user}-clicks", 0)
            return consumer.end_offsets([tp])[tp]
        finally:
            consumer.close()

    def quiet(self) -> bool:
        """Every click counted has been reported and applied: no replica holds a mark, and the
        master's position is at the end of the clicks topic."""
        for host in self.replicas:
            for key in ("due", "dirty", "inflight"):
                if self.redis_cli(host, "SCARD", f"{self.user}:clicks:{key}") != "0":
                    return False
        rows = self.sql("SELECT next_offset FROM links_consumerposition WHERE topic = %s",
                        f"{self.user}-clicks")
        position = rows[0][0] if rows else 0  # no row yet: nothing reported so far
        return position == self.clicks_topic_end()

    def settle_clicks(self, timeout: float = 90) -> int:
        """Wait until the clicks path is quiet; returns the master's final total."""
        wait_until(self.quiet, timeout=timeout, interval=0.2, what="the clicks path to settle")
        return sum(self.clicks_recorded().values())
