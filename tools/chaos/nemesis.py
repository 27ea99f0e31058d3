"""Injects and heals the faults of a schedule (tools/chaos/schedule.py) on a three-host cluster
(testkit/netns.py), recording each as it happened (tools/chaos/history.py).

Every inject returns its heal; `heal_all` then puts back whatever a failed heal left behind, so
that the checker judges a healed cluster.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from testkit import wait_until
from testkit.netns import Host, NetnsCluster, sh
from tools.chaos.history import Fault, History
from tools.chaos.schedule import Planned

log = logging.getLogger("chaos")

# Faults that may lose a replica's counted but not yet reported clicks
# (docs/delivery-guarantees.md, "What it loses against exactly-once").
LOSES_CLICKS = ("redis-wipe", "redis-rollback", "redis-full")


class Nemesis:
    def __init__(self, cluster: NetnsCluster, history: History) -> None:
        self.cluster = cluster
        self.history = history
        self.hosts = {host.name: host for host in cluster.hosts}

    # --- the shared services' processes --------------------------------------------------

    def _kafka_pids(self) -> list[int]:
        path = self.cluster.dir / "stack" / "kafka" / "broker.pid"
        return [int(path.read_text())] if path.exists() else []

    def _postgres_pids(self) -> list[int]:
        """The postmaster and its children (a pause must stop every backend)."""
        path = self.cluster.dir / "stack" / "postgres" / "postmaster.pid"
        if not path.exists():
            return []
        main = int(path.read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == main:  # the parent pid
                children.append(int(stat.parent.name))
        return [main, *children]

    @staticmethod
    def _signal(pids: list[int], sig: int) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    # --- one fault -------------------------------------------------------------------------

    def _kill(self, target: str) -> Callable[[], None]:
        if target == "kafka":
            pids = self._kafka_pids()
            self._signal(pids, signal.SIGKILL)
            wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), timeout=30,
                       what="Kafka to die")
            return lambda: self.cluster.kafka("start")
        if target == "postgres":
            self.cluster.postgres("crash")
            return lambda: self.cluster.postgres("start")
        host, what = self._process(target)
        host.stop(what, signal.SIGKILL)
        return lambda: host.start(what)

    def _pause(self, target: str) -> Callable[[], None]:
        if target in ("kafka", "postgres"):
            pids = self._kafka_pids() if target == "kafka" else self._postgres_pids()
            self._signal(pids, signal.SIGSTOP)
            return lambda: self._signal(pids, signal.SIGCONT)
        host, what = self._process(target)
        host.send(what, signal.SIGSTOP)
        return lambda: host.send(what, signal.SIGCONT)

    def _process(self, target: str) -> tuple[Host, str]:
        name, what = target.split("/")
        return self.hosts[name], what

    def _oneway(self, target: str) -> Callable[[], None]:
        source, to = target.split(">")
        address = self.cluster.bridge_ip if to == "svc" else self.hosts[to].ip
        self.hosts[source].route_block(address, True)
        return lambda: self.hosts[source].route_block(address, False)

    def _redis_restart(self, host: Host, *, snapshot: bool) -> None:
        host.stop("redis", signal.SIGKILL)
        if not snapshot:
            (self.cluster.redis_dir(host) / "dump.rdb").unlink(missing_ok=True)
        self.cluster.start_redis(host)

    def inject(self, planned: Planned) -> Callable[[], None]:
        """Inject `planned`; returns its heal."""
        kind, target = planned.kind, planned.target
        if kind == "kill":
            return self._kill(target)
        if kind == "pause":
            return self._pause(target)
        if kind == "isolate":
            self.hosts[target].link(False)
            return lambda: self.hosts[target].link(True)
        if kind == "oneway":
            return self._oneway(target)
        host = self.hosts[target]
        if kind == "redis-wipe":
            self._redis_restart(host, snapshot=False)
            return lambda: None
        if kind == "redis-rollback":
            self.cluster.redis_cli(host, "SAVE")
            return lambda: self._redis_restart(host, snapshot=True)
        if kind == "redis-full":
            self.cluster.redis_cli(host, "CONFIG", "SET", "maxmemory", "1")
            return lambda: self.cluster.redis_cli(host, "CONFIG", "SET", "maxmemory", "0")
        raise ValueError(f"unknown fault kind {kind!r}")

    def run(self, plan: list[Planned], started: float, stop: Callable[[], bool]) -> None:
        """Inject and heal `plan` on time (`started`: the run's start, time.monotonic())."""
        # At one moment: heals first (a resource freed as another fault takes it), except a
        # fault's own heal, which follows its start (a zero-length fault: a wipe, a kill with an
        # immediate restart).
        events: list[tuple[float, int, Planned]] = sorted(
            [(p.at, 1, p) for p in plan]
            + [(p.at + p.duration, 0 if p.duration > 0 else 2, p) for p in plan],
            key=lambda e: (e[0], e[1]))
        heals: dict[Planned, tuple[float, Callable[[], None]]] = {}
        for at, order, planned in events:
            while not stop() and time.monotonic() - started < at:
                time.sleep(min(0.05, at - (time.monotonic() - started)))
            if stop():
                break
            if order == 1:
                try:
                    heals[planned] = (time.monotonic(), self.inject(planned))
                except Exception:
                    log.exception("inject %s failed", planned)
                continue
            if planned in heals:
                began, heal = heals.pop(planned)
                self._heal_one(planned, began, heal)
        for planned, (began, heal) in heals.items():
            self._heal_one(planned, began, heal)

    def _heal_one(self, planned: Planned, began: float, heal: Callable[[], None]) -> None:
        try:
            heal()
        except Exception:
            log.exception("heal of %s failed (heal_all will retry)", planned)
        replica = planned.target if planned.kind in LOSES_CLICKS else None
        self.history.fault(Fault(planned.kind, planned.target, began, time.monotonic(), replica))

    def heal_all(self) -> None:
        """Whatever a failed heal left: every process running and not paused, every cable
        plugged, no route blocked, every Redis writable, Kafka and PostgreSQL up."""
        for pids in (self._kafka_pids(), self._postgres_pids()):
            self._signal(pids, signal.SIGCONT)
        self.cluster.kafka("start")
        self.cluster.postgres("start")
        for host in self.cluster.hosts:
            host.link(True)
            for line in sh("ip", "netns", "exec", host.ns, "ip", "route", "show").stdout \
                    .splitlines():
                words = line.split()
                if words[:1] == ["blackhole"]:  # "blackhole 10.231.7.11"
                    sh("ip", "netns", "exec", host.ns, "ip", "route", "del", "blackhole",
                       words[1], check=False)
            for what in host.procs:
                host.send(what, signal.SIGCONT)
                if host.procs[what].poll() is not None:
                    host.start(what)
            if host in self.cluster.replicas:
                wait_until(lambda h=host: self.cluster.redis_cli(h, "PING") == "PONG",
                           timeout=30, what=f"{host.name}'s Redis")
                self.cluster.redis_cli(host, "CONFIG", "SET", "maxmemory", "0")
