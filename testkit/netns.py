"""The assignment's topology on one machine: three hosts as Linux network namespaces.

    bridge <id>br  <net>.1/24 (the "network")  - Kafka and PostgreSQL listen here
      |- namespace <id>m   <net>.10  master:  gunicorn :8000, consume_clicks, outbox relay
      |- namespace <id>r1  <net>.11  replica: redis :26379, consume_links, report_clicks,
      |                                       gunicorn :8000
      |- namespace <id>r2  <net>.12  replica: the same

<net> is a /24 of 10.231-10.250.x.0 that no address or route of this machine overlaps, drawn
at random for each run (NetnsCluster.subnet_claim), and Kafka's and PostgreSQL's ports are free
ones: two suites (two clones) running at once on one machine each get their own network.

Each replica's Redis is on port 26379 inside its own namespace, as on separate hosts; node ids
are the hosts' addresses (`hostname -I` inside a namespace), so consumer groups end with the IP.
The test process talks to every host over the bridge, as a client on the network would.
Needs root (ip netns, veth, bridge). Everything it makes is removed by close().
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2
import requests

from testkit import ROOT, free_port, wait_until

# The /24s a cluster may take: 10.231.0.0 to 10.250.255.0 (private, RFC 1918, and far from the
# 10.0-10.1 that container and VPN networks usually take).
SUBNETS = [ipaddress.ip_network(f"10.{a}.{b}.0/24") for a in range(231, 251) for b in range(256)]
# How many times a cluster draws again when another run claimed the same /24 at the same moment.
SUBNET_DRAWS = 20


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def networks_in_use(*, besides: str | None = None) -> list[tuple[str, ipaddress.IPv4Network]]:
    """(device, network) of every IPv4 address and route of this machine's own namespace,
    `besides` (a device) left out; a default route is no network taken."""
    found = []
    for line in sh("ip", "-o", "-4", "addr", "show").stdout.splitlines():
        match = re.match(r"\d+:\s+(\S+)\s+inet\s+(\S+)", line)
        if match:
            found.append((match[1].split("@")[0],
                          ipaddress.ip_interface(match[2]).network))
    for line in sh("ip", "-4", "route", "show").stdout.splitlines():
        words = line.split()
        if words and words[0] in ("unicast", "blackhole", "unreachable", "prohibit", "throw"):
            words = words[1:]
        dev = re.search(r"\bdev (\S+)", line)
        if words and words[0] != "default":
            try:
                found.append((dev[1] if dev else "", ipaddress.ip_network(words[0],
                                                                          strict=False)))
            except ValueError:
                pass
    return [(device, net) for device, net in found if device != besides]


def subnets_free() -> list[ipaddress.IPv4Network]:
    """The /24s of SUBNETS that no address or route of this machine overlaps."""
    taken = [net for _, net in networks_in_use()]
    return [subnet for subnet in SUBNETS if not any(subnet.overlaps(net) for net in taken)]


def subnet_taken(subnet: ipaddress.IPv4Network, *, besides: str | None = None) -> bool:
    return any(subnet.overlaps(net) for _, net in networks_in_use(besides=besides))


# A command started again 2 s after it exits non-zero, as systemd's Restart=on-failure does;
# SIGTERM (and SIGINT) to the wrapper reaches the command, whose exit then ends the wrapper.
# A signal to the host's process group (Host.send, a SIGKILL) reaches both.
_RESTARTED = """
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 0' TERM INT
while true; do
  "$@" & child=$!
  wait "$child"; code=$?
  [ "$code" -eq 0 ] && exit 0
  echo "restarted: exited with $code, starting again in 2 s (as systemd's Restart=on-failure)"
  sleep 2
done
"""


def restarted(cmd: list[str]) -> list[str]:
    """`cmd` under a wrapper that starts it again when it exits non-zero (_RESTARTED)."""
    return ["bash", "-c", _RESTARTED, "restarted", *cmd]


class Host:
    def __init__(self, cluster: NetnsCluster, name: str, number: int) -> None:
        self.cluster = cluster
        self.name = name
        self.ns = f"{cluster.id}{name}"
        self.number = number  # its address in the cluster's /24
        self.ip = ""  # set when the cluster has claimed its network (NetnsCluster.build)
        self.veth = f"{cluster.id}{name}v"  # the root side of its cable
        self.procs: dict[str, subprocess.Popen] = {}
        self.specs: dict[str, tuple[list[str], dict[str, str] | None]] = {}

    @property
    def url(self) -> str:
        return f"http://{self.ip}:8000"

    def start(self, what: str, cmd: list[str] | None = None,
              env: dict[str, str] | None = None) -> None:
        """Start `what` with `cmd` and `env` (kept: without them, as it was started last).
        In a session of its own, so that a signal reaches it with its children (gunicorn's
        workers) as a host's crash or pause would."""
        assert what not in self.procs or self.procs[what].poll() is not None, f"{what} runs"
        if cmd is None:
            cmd, env = self.specs[what]
        self.specs[what] = (cmd, env)
        log = open(self.cluster.dir / f"{self.name}-{what}.log", "ab")
        self.procs[what] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *cmd], cwd=ROOT, start_new_session=True,
            env={**self.cluster.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def send(self, what: str, sig: int) -> bool:
        """Send `sig` to `what` and its children; False if it is not running."""
        proc = self.procs.get(what)
        if proc is None or proc.poll() is not None:
            return False
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def stop(self, what: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        proc = self.procs.get(what)
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else 0
        if sig == signal.SIGKILL:
            self.send(what, sig)  # the children too: a killed gunicorn's workers hold its port
        else:
            proc.send_signal(sig)
        return proc.wait(timeout)

    def log(self, what: str) -> str:
        return (self.cluster.dir / f"{self.name}-{what}.log").read_text(errors="replace")

    def link(self, up: bool) -> None:
        """Plug or unplug this host's network cable."""
        sh("ip", "link", "set", self.veth, "up" if up else "down")

    def route_block(self, address: str, blocked: bool) -> None:
        """Drop (or send again) every packet this host sends to `address`: a one-way
        partition (the other side's packets still arrive; TCP to it stalls both ways)."""
        sh("ip", "netns", "exec", self.ns, "ip", "route", "add" if blocked else "del",
           "blackhole", f"{address}/32", check=not blocked)


class NetnsCluster:
    def __init__(self, data_dir: Path, user: str) -> None:
        self.id = "s" + uuid.uuid4().hex[:4]  # short: interface names have 15 characters
        self.dir = data_dir / f"netns-{self.id}"
        self.dir.mkdir(parents=True)
        self.user = user
        self.bridge = f"{self.id}br"
        self.master = Host(self, "m", 10)
        self.r1 = Host(self, "r1", 11)
        self.r2 = Host(self, "r2", 12)
        self.replicas = [self.r1, self.r2]
        self.hosts = [self.master, *self.replicas]
        self.subnet: ipaddress.IPv4Network | None = None  # claimed by build()
        self.bridge_ip = ""
        # PostgreSQL and Kafka's controller listen on 127.0.0.1 too, where another run's would
        # take the same fixed ports.
        self.kafka_port, self.kafka_controller_port, self.pg_port = (
            free_port(), free_port(), free_port())
        self.database = user
        # The stack's scripts get this run's data directory from the start: close() stops
        # Kafka and PostgreSQL with it even when build() failed (never another run's services).
        self.stack_env = {**os.environ, "SHORTENER_DATA": str(self.dir / "stack"),
                          "SHORTENER_KAFKA_LIBS": str(ROOT / ".local" / "kafka" / "libs"),
                          "SHORTENER_KAFKA_PORT": str(self.kafka_port),
                          "SHORTENER_KAFKA_CONTROLLER_PORT": str(self.kafka_controller_port),
                          "SHORTENER_PG_PORT": str(self.pg_port)}
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SHORTENER_", "DATABASE_", "REDIS_", "KAFKA_"))}
        self.env.update({
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "SHORTENER_USER": user,
            "REDIS_URL": "redis://127.0.0.1:26379/0",
            "DJANGO_SECRET_KEY": "netns-test-only",
            "GUNICORN_WORKERS": "1",
            # Short flush so that the scenarios settle fast.
            "SHORTENER_CLICKS_FLUSH_SECONDS": "1",
        })

    def _addresses_set(self, subnet: ipaddress.IPv4Network) -> None:
        """Every address in `subnet`, and the environment that names them."""
        self.subnet = subnet
        self.bridge_ip = str(subnet[1])
        for host in self.hosts:
            host.ip = str(subnet[host.number])
        self.stack_env.update({"SHORTENER_KAFKA_HOST": self.bridge_ip,
                               "SHORTENER_PG_LISTEN": f"127.0.0.1,{self.bridge_ip}",
                               "SHORTENER_PG_TRUST_CIDR": str(subnet)})
        self.env.update({
            "KAFKA_BOOTSTRAP_SERVERS": f"{self.bridge_ip}:{self.kafka_port}",
            "DATABASE_URL": f"postgres://postgres@{self.bridge_ip}:{self.pg_port}/{self.user}",
            "DJANGO_ALLOWED_HOSTS": ",".join(h.ip for h in self.hosts),
        })

    # --- the network -----------------------------------------------------------------------

    def subnet_claim(self) -> ipaddress.IPv4Network:
        """Make the bridge with the first address of a /24 of SUBNETS that nothing on this
        machine overlaps, drawn at random. Drawn, then checked again once the bridge holds it:
        another run may have drawn the same one at the same moment; then both see the other's
        bridge, both let go and draw again, so no two clusters ever keep one network."""
        draw = random.SystemRandom()
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        for _ in range(SUBNET_DRAWS):
            free = subnets_free()
            if not free:
                raise RuntimeError("every /24 of 10.231-10.250 is in use on this machine")
            subnet = draw.choice(free)
            sh("ip", "addr", "add", f"{subnet[1]}/{subnet.prefixlen}", "dev", self.bridge)
            if not subnet_taken(subnet, besides=self.bridge):
                return subnet
            sh("ip", "addr", "flush", "dev", self.bridge)
        raise RuntimeError(f"no free /24 of 10.231-10.250 after {SUBNET_DRAWS} draws")

    def build(self) -> None:
        self._addresses_set(self.subnet_claim())
        sh("ip", "link", "set", self.bridge, "up")
        for host in self.hosts:
            self.host_plug(host)

    def host_plug(self, host: Host) -> None:
        """Make `host`'s namespace and cable it to the bridge at its address."""
        sh("ip", "netns", "add", host.ns)
        sh("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns",
           host.ns)
        sh("ip", "link", "set", host.veth, "master", self.bridge)
        sh("ip", "link", "set", host.veth, "up")
        for cmd in (["ip", "addr", "add", f"{host.ip}/{self.subnet.prefixlen}", "dev", "eth0"],
                    ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "lo", "up"],
                    ["ip", "route", "add", "default", "via", self.bridge_ip]):
            sh("ip", "netns", "exec", host.ns, *cmd)

    # --- shared services: Kafka and PostgreSQL on the network ------------------------------

    def kafka(self, action: str) -> None:
        subprocess.run(["bash", "stack/kafka.sh", action], cwd=ROOT, env=self.stack_env,
                       check=True, capture_output=True)

    def postgres(self, action: str, *args: str) -> None:
        subprocess.run(["bash", "stack/postgres.sh", action, *args], cwd=ROOT,
                       env=self.stack_env, check=True, capture_output=True)

    def sql(self, query: str, *params) -> list[tuple]:
        conn = psycopg2.connect(host=self.bridge_ip, port=self.pg_port, user="postgres",
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
        # As systemd runs them (deploy/systemd: Restart=on-failure, RestartSec=2): a job that
        # lost its lead (PostgreSQL restarted: runtime/leadership.py) exits 1 and comes back.
        self.master.start("clicks", restarted([sys.executable, "manage.py", "consume_clicks"]),
                          env)
        self.master.start("outbox", restarted([sys.executable, "manage.py", "republish_links",
                                               "--pending", "--follow", "--interval", "1"]), env)

    def redis_dir(self, host: Host) -> Path:
        return self.dir / f"{host.name}-redis"

    def start_redis(self, host: Host) -> None:
        # No persistence: the scenarios restart it empty on purpose. A snapshot is only what
        # `SAVE` writes (tools/chaos: a Redis restored from an older snapshot); the folder is the
        # host's own.
        self.redis_dir(host).mkdir(exist_ok=True)
        host.start("redis", ["redis-server", "--port", "26379", "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no",
                             "--dir", str(self.redis_dir(host))])

    def start_replica(self, host: Host) -> None:
        env = {"SHORTENER_ROLE": "replica", "GUNICORN_BIND": f"{host.ip}:8000"}
        self.start_redis(host)
        host.start("links", [sys.executable, "manage.py", "consume_links"], env)
        host.start("report", [sys.executable, "manage.py", "report_clicks"], env)
        host.start("web", [sys.executable, "-m", "gunicorn", "shortener_project.asgi"], env)

    def restart(self, host: Host, what: str, sig: int = signal.SIGKILL) -> None:
        host.stop(what, sig)
        host.start(what)

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
                    try:
                        os.killpg(proc.pid, signal.SIGCONT)  # a paused one dies too
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
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

        consumer = KafkaConsumer(bootstrap_servers=f"{self.bridge_ip}:{self.kafka_port}")
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
