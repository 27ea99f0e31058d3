"""The fault schedule of a chaos run, drawn from a seed: the same seed and length give the same
schedule, printed before the run so that a failing run can be replayed.

Faults arrive at random (exponential gaps, `mean_gap` seconds on average), each on a target that
no other fault holds at that moment, at most `MAX_ACTIVE` at once: several things break at a
time, as in a real outage, but never one thing twice over (a process killed while paused).

Kinds (tools/chaos/nemesis.py injects and heals them):
  kill           SIGKILL of a process (and its children), restarted after `duration` s;
                 "kafka" is the broker's JVM, "postgres" an immediate shutdown (a crash)
  pause          SIGSTOP, SIGCONT after `duration` s
  isolate        a host's network cable unplugged for `duration` s
  oneway         a host stops sending to another (`target` "r1>m"; "svc" is the network's
                 own address, where Kafka and PostgreSQL listen) for `duration` s
  redis-wipe     a replica's Redis killed and started empty
  redis-rollback a replica's Redis snapshotted, then after `duration` s killed and started
                 from that snapshot (an older backup restored)
  redis-full     a replica's Redis refuses writes (maxmemory reached) for `duration` s
Clock jumps are not drawn: a network namespace shares the machine's wall clock, and Linux's time
namespaces offset only the monotonic clocks (time_namespaces(7)).

Two topologies (Topology): the assignment's three hosts (testkit/netns.py, the default: a seed
draws the same schedule as before topologies existed) and a deployment's (testkit/scale.py:
three Kafka brokers "k1"-"k3", two masters "m1", "m2" behind "lb", five replicas), where
"k1/kafka" is one broker's JVM and "lb/haproxy" the load balancer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

HOSTS = ("m", "r1", "r2")
REPLICAS = ("r1", "r2")
PROCESSES = ("m/web", "m/clicks", "m/outbox", "r1/web", "r1/links", "r1/report",
             "r2/web", "r2/links", "r2/report", "kafka", "postgres")


@dataclass(frozen=True)
class Topology:
    """What faults can hit: hosts (a cable, a route), replicas (their Redis), processes."""
    hosts: tuple[str, ...]
    replicas: tuple[str, ...]
    processes: tuple[str, ...]


THREE_HOSTS = Topology(HOSTS, REPLICAS, PROCESSES)
_SCALE_REPLICAS = tuple(f"r{i}" for i in range(1, 6))
SCALE = Topology(
    hosts=("m1", "m2", "lb", "k1", "k2", "k3", *_SCALE_REPLICAS),
    replicas=_SCALE_REPLICAS,
    processes=(*(f"{m}/{p}" for m in ("m1", "m2") for p in ("web", "clicks", "outbox")),
               "lb/haproxy", "k1/kafka", "k2/kafka", "k3/kafka", "postgres",
               *(f"{r}/{p}" for r in _SCALE_REPLICAS for p in ("web", "links", "report"))))
TOPOLOGIES = {"three-hosts": THREE_HOSTS, "scale": SCALE}
# How often each kind is drawn, relative to the others.
WEIGHTS = {"kill": 6, "pause": 3, "isolate": 2, "oneway": 2, "redis-wipe": 1,
           "redis-rollback": 1, "redis-full": 1}
# Seconds a fault lasts: (least, most), drawn uniformly.
DURATIONS = {"kill": (0.0, 5.0), "pause": (1.0, 8.0), "isolate": (2.0, 15.0),
             "oneway": (2.0, 15.0), "redis-wipe": (0.0, 0.0), "redis-rollback": (3.0, 15.0),
             "redis-full": (2.0, 10.0)}
MAX_ACTIVE = 3
# No fault starts in the first seconds (the load gets going) nor ends in the last ones.
LEAD_IN, LEAD_OUT = 3.0, 5.0


@dataclass(frozen=True)
class Planned:
    """One fault of the schedule: `kind` on `target`, `at` seconds into the run, for
    `duration` seconds."""
    at: float
    kind: str
    target: str
    duration: float

    def holds(self) -> str:
        """The resource the fault takes: a process, a host's network, a replica's Redis."""
        if self.kind in ("isolate", "oneway"):
            return "net:" + self.target.split(">")[0]
        if self.kind.startswith("redis-"):
            return f"{self.target}/redis"
        return self.target

    def __str__(self) -> str:
        return f"{self.at:7.1f}s {self.kind:<14} {self.target:<10} for {self.duration:4.1f}s"


def _target(rng: random.Random, kind: str, topology: Topology) -> str:
    if kind in ("kill", "pause"):
        return rng.choice(topology.processes)
    if kind == "isolate":
        return rng.choice(topology.hosts)
    if kind == "oneway":
        source = rng.choice(topology.hosts)
        return f"{source}>{rng.choice([h for h in (*topology.hosts, 'svc') if h != source])}"
    return rng.choice(topology.replicas)


def draw(seed: int, seconds: float, *, mean_gap: float = 4.0,
         topology: Topology = THREE_HOSTS) -> list[Planned]:
    """The schedule of a run `seconds` long on `topology`: faults in order of `at`, every one
    healed by `seconds - LEAD_OUT`. Pure: the same arguments give the same list."""
    rng = random.Random(seed)
    kinds, weights = zip(*WEIGHTS.items())
    plan: list[Planned] = []
    busy: dict[str, float] = {}  # resource -> when its fault heals
    at = LEAD_IN
    while True:
        at += rng.expovariate(1 / mean_gap)
        kind = rng.choices(kinds, weights)[0]
        least, most = DURATIONS[kind]
        fault = Planned(round(at, 1), kind, _target(rng, kind, topology),
                        round(rng.uniform(least, most), 1))
        if fault.at + fault.duration > seconds - LEAD_OUT:
            if at > seconds - LEAD_OUT:
                return plan
            continue
        active = [r for r, until in busy.items() if until > fault.at]
        if fault.holds() in active or len(active) >= MAX_ACTIVE:
            continue  # drawn all the same: the draw sequence does not depend on this check
        busy[fault.holds()] = fault.at + fault.duration
        plan.append(fault)
