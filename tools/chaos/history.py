"""What the chaos run's clients saw, as plain records: the checker (tools/chaos/checker.py)
judges these and nothing else, so it can be tested on histories written by hand.

Times are seconds on the runner's monotonic clock (time.monotonic()), the same for every record
of one run. A link's operations never overlap: the load (tools/chaos/load.py) runs one at a time
per link, so a link's states are a sequence.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal

OpKind = Literal["create", "retarget", "takedown", "putback"]
# ok: the master acknowledged it (2xx); unknown: no answer or a 5xx, so it may or may not have
# taken effect (the load then leaves the link alone: it is the link's last operation);
# refused: a 4xx, it did not happen.
Outcome = Literal["ok", "unknown", "refused"]


@dataclass(frozen=True, slots=True)
class State:
    """What a link does: redirect to `target` when `active`, else 404/410 (taken down)."""
    target: str
    active: bool


@dataclass(frozen=True, slots=True)
class Op:
    """One operation on a link as the client saw it: asked at `invoked`, answered (or given up
    on) at `completed`; `state` is the link's state if it took effect."""
    tinyurl: str
    kind: OpKind
    state: State
    invoked: float
    completed: float
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Read:
    """One request to a replica: GET (a click, counted when answered 302) or HEAD (not
    counted). `status` None: no answer (a timeout or a refused connection: a GET then may or
    may not have been counted)."""
    replica: str
    tinyurl: str
    method: Literal["GET", "HEAD"]
    started: float
    ended: float
    status: int | None
    location: str | None


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault as injected: `kind` on `target` (e.g. "kill" on "r1/links"), from `started`
    until `healed`. `loses_clicks_on`: the replica whose unreported clicks the fault may lose
    (docs/delivery-guarantees.md: a Redis wiped, restored from a snapshot, or refusing writes);
    None for a fault that may lose none."""
    kind: str
    target: str
    started: float
    healed: float
    loses_clicks_on: str | None = None


@dataclass
class Final:
    """What was read once every fault had healed and every replica was ready again.

    master: each link's state in PostgreSQL (tinyurl -> State); served: each replica's answer
    to a HEAD of each link (replica -> tinyurl -> (status, location)); recorded: the master's
    click totals (replica -> tinyurl -> count), each replica's reports summed over its
    incarnations; ready_after: seconds from the end of the faults until the replica said ready
    and served every link's state (None: it never did within the run's limit)."""
    master: dict[str, State] = field(default_factory=dict)
    served: dict[str, dict[str, tuple[int | None, str | None]]] = field(default_factory=dict)
    recorded: dict[str, dict[str, int]] = field(default_factory=dict)
    ready_after: dict[str, float | None] = field(default_factory=dict)


@dataclass
class History:
    """Everything a run recorded; appended to from the load's threads (under `lock`)."""
    ops: list[Op] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def op(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)

    def read(self, read: Read) -> None:
        with self.lock:
            self.reads.append(read)

    def fault(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)
