"""The chaos run's checker: a pure function from what the clients saw (tools/chaos/history.py) to
the guarantees that did not hold. Jepsen-style, it trusts nothing but the client's history and
the final reads: no log, no metric, no server's own account, since those are what a fault breaks.
It imports neither Django nor any client, so it is tested on histories written by hand.

A link's *states* are its operations' states in the order the load ran them (one at a time per
link): the create's, then each later operation's that was acknowledged ("ok"), and that of one
answered "unknown" (it may or may not have taken effect). Refused operations (4xx) never happened
and are ignored, as are operations with no tinyurl (a create the client got no answer to). A state
is *served* as 302 with `location` == its target when active, as 404 or 410 when taken down.

1. Acknowledged links are served. For every link whose create was acknowledged, its promised
   final states are the last acknowledged one, plus that of a later "unknown" operation. The
   master (`final.master`, when read) holds one of them; every replica of `final.served` serves
   the one the master holds (any promised one if the master was not read or holds another).
   Numbered 1 when a promised state is active (a link missing), else 2.
2. Taken-down links stay down: the same check when every promised state is taken down, so a
   replica answering 302 at the end is a 2. During the run, a takedown that comes back is a 3.
3. Monotonic reads, per (replica, link). Each read answered 302, 404 or 410 is explained by a
   state index k: a state served whose operation was invoked no later than the read ended (a
   replica cannot serve what nobody asked for yet), or -1, "absent": a 404 before the link
   reached the replica. A read that began after another one ended may not be explained by a
   smaller index than that one's. Each read takes the smallest index it can, which leaves the
   most room to the reads after it, so a violation is reported only when no explanation exists.
   Only real-time order binds (reads that overlap may take effect in either order). Other answers
   (none, 503, ...) are not states; reads of a link no recorded operation made are not checked
   (`reads_unchecked`). Reads wrong the same way (answer and floor) are reported once, counted.
4. Clicks. Per (replica, link): made = GETs answered 302, unknown = GETs not answered or
   answered 5xx (maybe counted: Redis may time out after the click script ran), recorded = the
   master's total (`final.recorded`). recorded > made + unknown is a click counted twice. lost =
   made - recorded (at least 0) may not exceed the clicks made during a fault that may lose that
   replica's clicks (`Fault.loses_clicks_on`): those it had counted and not yet reported, i.e.
   made within `loss_window` (a flush interval) before it began, or further back through any
   fault that held the replica's reports back (its reporter stopped, its host cut off from
   Kafka, Kafka down), or while it lasted: the delivery guarantee's only exception.
5. Readiness: every replica said ready, serving every link, within `ready_limit` seconds of the
   end of the faults (`final.ready_after`); and never said ready while it could not serve the
   current state. A replica answers an unknown link 404 only while its ready mark stands (else
   503, "catching up"), so each 404 is the replica saying it is ready: a 404 for a link whose
   acknowledged state was active at least `lag` seconds before the read (and no later state of
   it taken down) is a 5 if those seconds had room for the record to arrive — `lag` seconds in
   a row, after the acknowledgement and before the read, with no fault that may delay records
   on their way to that replica active or healed less than `grace` seconds before (Kafka
   killed or paused, its consume_links killed or paused, its host cut off from Kafka).
   A Redis wiped or restored is no excuse: the replica must say it is not ready until it holds
   again what it held. (A 404 after the replica had served the link is a 3, not also a 5.)

`Verdict.figures` counts operations by kind and outcome, reads by status class, faults by kind,
the clicks (`clicks_lost_allowed`: the lost ones a fault excuses) and the slowest readiness.
Messages give times in seconds since the run's first record (`Verdict.start`). Each violation
carries the faults that may explain it, for the report: those active within 5 s of the reads
concerned (3), those touching the replica since the link last changed (1, 2), those that may lose
its clicks or touch it (4), those active within 5 s of the end of the faults (5).
"""

from __future__ import annotations

import heapq
import re
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass

from tools.chaos.history import Fault, Final, History, Op, Read, State

NEARBY = 5.0  # seconds around a violation within which a fault is named with it
SHOWN = 20  # violations printed by report()
FAULTS_SHOWN = 8  # faults printed per violation
DOWN = ("down",)  # what a 404 or 410 shows of a state: only that it is not active
Key = tuple[str, ...]


@dataclass(frozen=True)
class Violation:
    guarantee: int  # 1..5, as numbered in the module's docstring
    tinyurl: str | None
    replica: str | None
    message: str
    faults: tuple[Fault, ...]


@dataclass
class Verdict:
    violations: list[Violation]
    figures: dict[str, int | float]
    start: float = 0.0  # the run's first record: the messages' times count from it


@dataclass
class _Run:
    """What every check shares: the run's start (for readable times) and its faults."""
    start: float
    faults: list[Fault]

    def t(self, when: float) -> str:
        return f"{when - self.start:.3f}s"

    def near(self, first: float, last: float) -> tuple[Fault, ...]:
        return tuple(f for f in self.faults
                     if f.started - NEARBY <= last and f.healed + NEARBY >= first)

    def touching(self, host: str, since: float = float("-inf")) -> tuple[Fault, ...]:
        # A fault's target names hosts and services ("r1/links"); a partition may name two.
        return tuple(f for f in self.faults if f.healed >= since
                     and (host in re.split(r"[^A-Za-z0-9_]+", f.target)
                          or f.loses_clicks_on == host))


class _Sequence:
    """One link's states in order, with where each served value appears (for bisect)."""

    def __init__(self, ops: list[Op]):
        self.ops = ops
        self.where: dict[Key, list[int]] = defaultdict(list)
        for k, op in enumerate(ops):
            self.where[_key(op.state)].append(k)

    def first(self, key: Key, floor: int) -> int | None:
        """The smallest index >= floor whose state shows `key`."""
        indices = self.where.get(key, [])
        i = bisect_left(indices, floor)
        return indices[i] if i < len(indices) else None


def _key(state: State) -> Key:
    return ("302", state.target) if state.active else DOWN


def _read_key(read: Read) -> Key | None:
    if read.status == 302:
        return ("302", read.location or "")
    return DOWN if read.status in (404, 410) else None


def _serves(state: State, answer: tuple[int | None, str | None]) -> bool:
    status, location = answer
    return status == 302 and location == state.target if state.active else status in (404, 410)


def _shown(state: State) -> str:
    return f"302 -> {state.target}" if state.active else "404/410 (taken down)"


def _op_shown(op: Op, run: _Run) -> str:
    if op.outcome == "ok":
        return f"{op.kind} acknowledged at {run.t(op.completed)}"
    return f"{op.kind} invoked at {run.t(op.invoked)}, outcome {op.outcome}"


def check(history: History, final: Final, *, ready_limit: float = 120.0,
          loss_window: float = 5.0, lag: float = 10.0, grace: float = 30.0) -> Verdict:
    """Every violation of the five guarantees (module docstring) in `history` and `final`."""
    times = [op.invoked for op in history.ops] + [r.started for r in history.reads] \
        + [f.started for f in history.faults]
    run = _Run(min(times, default=0.0), sorted(history.faults, key=lambda f: f.started))
    figures = _figures(history)
    links = _links(history.ops)
    groups: dict[tuple[str, str], list[Read]] = defaultdict(list)
    for read in history.reads:  # grouped once: reads are many
        if read.tinyurl:
            groups[(read.replica, read.tinyurl)].append(read)
    violations = _check_final(links, final, run)
    violations += _check_monotonic(links, groups, run, figures)
    violations += _check_clicks(groups, final, run, loss_window, figures)
    violations += _check_ready(final, ready_limit, run, figures)
    violations += _check_said_ready(links, groups, run, lag, grace, figures)
    violations.sort(key=lambda v: v.guarantee)  # stable: within one, in the checks' order
    return Verdict(violations, figures, run.start)


def _figures(history: History) -> dict[str, int | float]:
    counts: Counter[str] = Counter()
    for op in history.ops:
        counts[f"ops_{op.kind}_{op.outcome}"] += 1
    for read in history.reads:
        counts[f"reads_{'none' if read.status is None else f'{read.status // 100}xx'}"] += 1
    for fault in history.faults:
        counts[f"faults_{fault.kind}"] += 1
    figures: dict[str, int | float] = {"ops": len(history.ops), "reads": len(history.reads),
                                       "faults": len(history.faults)}
    figures.update(sorted(counts.items()))
    return figures


def _links(ops: list[Op]) -> dict[str, list[Op]]:
    """Each link's operations that may have happened, in the order the load ran them."""
    links: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.tinyurl and op.outcome != "refused":
            links[op.tinyurl].append(op)
    for link_ops in links.values():
        link_ops.sort(key=lambda op: (op.invoked, op.completed))
    return links


# --- 1 and 2: the final state -----------------------------------------------------------------

def _promised(ops: list[Op]) -> list[Op]:
    """The operations whose state the link may end in: the last acknowledged one, and a later
    one answered "unknown"; none if the create was not acknowledged (no promise was made)."""
    acked = [op for op in ops if op.outcome == "ok"]
    if not any(op.kind == "create" for op in acked):
        return []
    return acked[-1:] + ([ops[-1]] if ops[-1].outcome == "unknown"
                         and ops[-1].invoked > acked[-1].invoked else [])


def _check_final(links: dict[str, list[Op]], final: Final, run: _Run) -> list[Violation]:
    violations = []
    for tinyurl, ops in sorted(links.items()):
        if not (promised_ops := _promised(ops)):
            continue
        promised = [op.state for op in promised_ops]
        why = " or ".join(f"{_shown(op.state)} ({_op_shown(op, run)})" for op in promised_ops)
        since = ops[-1].invoked - NEARBY  # faults from the link's last change on may explain
        held = final.master.get(tinyurl)
        if final.master and held not in promised:  # an empty `master`: it was not read
            violations.append(Violation(
                _final_guarantee(promised), tinyurl, "m", f"the master holds "
                f"{_shown(held) if held else 'nothing'} for {tinyurl}, promised {why}",
                run.touching("m", since)))
        # Replicas follow the master: once it holds a promised state, that is the one to serve.
        expected = [held] if held in promised else promised
        for replica, answers in sorted(final.served.items()):
            answer = answers.get(tinyurl, (None, None))
            if not any(_serves(state, answer) for state in expected):
                said = "gives no answer" if answer[0] is None \
                    else f"answers {answer[0]} {answer[1] or ''}".strip()
                wanted = f"{_shown(expected[0])}, which the master holds (promised {why})" \
                    if len(expected) < len(promised) else why
                violations.append(Violation(
                    _final_guarantee(expected), tinyurl, replica, f"{replica} finally {said} for "
                    f"{tinyurl}, expected {wanted}", run.touching(replica, since)))
    return violations


def _final_guarantee(states: list[State]) -> int:
    """1 when a link that should redirect does not, 2 when one that should be down is not."""
    return 1 if any(state.active for state in states) else 2


# --- 3: monotonic reads ------------------------------------------------------------------------

def _check_monotonic(links: dict[str, list[Op]], groups: dict[tuple[str, str], list[Read]],
                     run: _Run, figures: dict[str, int | float]) -> list[Violation]:
    violations: list[Violation] = []
    unchecked = 0
    for (replica, tinyurl), reads in sorted(groups.items()):
        if tinyurl not in links:
            unchecked += len(reads)  # a link no recorded operation made: nothing to compare to
            continue
        violations += _monotonic(replica, tinyurl, _Sequence(links[tinyurl]), reads, run)
    figures["reads_unchecked"] = unchecked
    return violations


def _explain(seq: _Sequence, key: Key, floor: int, read: Read) -> int | str:
    """The smallest state index that explains `read` given the floor, or why none does."""
    if key == DOWN and read.status == 404 and floor == -1:
        return -1  # absent: the link has not reached this replica yet
    k = seq.first(key, max(floor, 0))
    if k is not None:
        return k if seq.ops[k].invoked <= read.ended else "early"
    return "back" if key in seq.where else "never"


def _monotonic(replica: str, tinyurl: str, seq: _Sequence, reads: list[Read],
               run: _Run) -> list[Violation]:
    # Reads already explained, by end time: once one ended before a read began, its index is a
    # floor for that read (real-time order); overlapping reads do not bind each other.
    ended: list[tuple[float, int, int, Read]] = []
    floor, floor_read = -1, None
    bad: dict[tuple, list] = {}  # (why, key, floor) -> [first read, count, last read, floor read]
    for n, read in enumerate(sorted(reads, key=lambda r: (r.started, r.ended))):
        key = _read_key(read)
        if key is None:
            continue  # no answer, or 503: not a state
        while ended and ended[0][0] < read.started:
            _, _, k, earlier = heapq.heappop(ended)
            if k > floor:
                floor, floor_read = k, earlier
        k = _explain(seq, key, floor, read)
        if isinstance(k, int):
            heapq.heappush(ended, (read.ended, n, k, read))
        elif (k, key, floor) in bad:
            bad[(k, key, floor)][1:3] = [bad[(k, key, floor)][1] + 1, read]
        else:
            bad[(k, key, floor)] = [read, 1, read, floor_read]
    return [_monotonic_violation(replica, tinyurl, seq, why, key, floor, entry, run)
            for (why, key, floor), entry in bad.items()]


def _monotonic_violation(replica: str, tinyurl: str, seq: _Sequence, why: str, key: Key,
                         floor: int, entry: list, run: _Run) -> Violation:
    first, count, last, floor_read = entry
    served = f"{first.status} {first.location or ''}".strip()
    text = f"{replica} served {served} for {tinyurl} in a read at {run.t(first.started)}" \
           f"-{run.t(first.ended)}"
    if why == "early":
        op = seq.ops[seq.first(key, max(floor, 0))]
        text += f", before it was asked for ({op.kind} invoked at {run.t(op.invoked)})"
    elif why == "never" and floor < 0:
        text += ", a state never asked for"
    else:
        text += (", a state never asked for," if why == "never" else "") + \
            f" after it had served state {floor}, {_shown(seq.ops[floor].state)} " \
            f"({_op_shown(seq.ops[floor], run)}), in a read at {run.t(floor_read.started)}"
    if count > 1:
        text += f"; {count - 1} more such reads until {run.t(last.started)}"
    return Violation(3, tinyurl, replica, text, run.near(first.started, last.ended))


# --- 4: clicks --------------------------------------------------------------------------------

# The replicas' click producer's delivery timeout (topics/clicks.py, delivery_timeout_ms): how
# long one report send may stay unacknowledged, which a broker's fault can make it do (a
# follower still in the in-sync set keeps acks=all waiting until it is dropped from it).
REPORT_DELIVERY_SECONDS = 30.0


def _broker(host: str) -> bool:
    """A Kafka broker's host of the scale topology ("k1"-"k3", testkit/scale.py)."""
    return len(host) > 1 and host[0] == "k" and host[1:].isdigit()


def _hits_brokers(fault: Fault, replica: str) -> bool:
    """Whether `fault` may hold `replica`'s writes to or reads from the scale topology's Kafka
    back: a broker killed, paused or cut off (its partitions wait for new leaders, fenced after
    the brokers' session timeout; with a second one down, acks=all waits until one is back:
    min.insync.replicas=2), a one-way cut from a broker (replication between brokers stalls
    the in-sync set), or from this replica's host to a broker (its leader)."""
    if fault.kind in ("kill", "pause", "isolate"):
        return _broker(fault.target.split("/")[0])
    if fault.kind == "oneway":
        source, to = fault.target.split(">")
        return _broker(source) or (source == replica and _broker(to))
    return False


def _delays_reports(fault: Fault, replica: str) -> bool:
    """Whether `fault` keeps `replica`'s counted clicks from being reported (acknowledged by
    Kafka): its reporter stopped, its host cut off from Kafka, or Kafka itself down (on the
    scale topology: any broker's fault, _hits_brokers)."""
    return (fault.target in (f"{replica}/report", "kafka", f"{replica}>svc")
            or (fault.kind == "isolate" and fault.target == replica)
            or _hits_brokers(fault, replica))


def _loss_start(fault: Fault, faults: list[Fault], window: float) -> float:
    """Since when the clicks `fault` may lose were made: what its replica had counted and not
    yet reported, i.e. a flush interval (`window`) before it, and further back through every
    fault that held its reports back meanwhile (a wipe while Kafka is down loses every click
    counted since Kafka went down)."""
    start = fault.started - window
    replica = fault.loses_clicks_on or ""
    delaying = [f for f in faults if _delays_reports(f, replica)]
    moved = True
    while moved:
        moved = False
        for f in delaying:
            # A send waiting on a broker's fault may stay unacknowledged until its delivery
            # timeout, after the fault healed (REPORT_DELIVERY_SECONDS).
            after = REPORT_DELIVERY_SECONDS if _hits_brokers(f, replica) else 0.0
            if f.started - window < start <= f.healed + window + after:
                start, moved = f.started - window, True
    return start


def _loss_windows(faults: list[Fault], window: float) -> dict[str, tuple[list[float], list[float]]]:
    """Per replica, the merged times when a click made may be lost: (starts, ends), sorted."""
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for f in faults:
        if f.loses_clicks_on:
            spans[f.loses_clicks_on].append((_loss_start(f, faults, window), f.healed))
    merged: dict[str, tuple[list[float], list[float]]] = {}
    for replica, pairs in spans.items():
        joined: list[list[float]] = []
        for start, end in sorted(pairs):
            if joined and start <= joined[-1][1]:
                joined[-1][1] = max(joined[-1][1], end)
            else:
                joined.append([start, end])
        merged[replica] = ([start for start, _ in joined], [end for _, end in joined])
    return merged


def _within(windows: tuple[list[float], list[float]] | None, when: float) -> bool:
    if not windows:
        return False
    i = bisect_right(windows[0], when) - 1
    return i >= 0 and when <= windows[1][i]


def _check_clicks(groups: dict[tuple[str, str], list[Read]], final: Final, run: _Run,
                  window: float, figures: dict[str, int | float]) -> list[Violation]:
    windows = _loss_windows(run.faults, window)
    pairs = set(groups) | {(r, t) for r, counts in final.recorded.items() for t in counts}
    totals: Counter[str] = Counter()
    violations = []
    for replica, tinyurl in sorted(pairs):
        gets = [r for r in groups.get((replica, tinyurl), []) if r.method == "GET"]
        clicks = [r for r in gets if r.status == 302]
        # A GET answered 5xx may have been counted too: Redis can time out after the click
        # script ran (redirects/counting.link_click_async).
        made = len(clicks)
        unknown = sum(r.status is None or r.status >= 500 for r in gets)
        recorded = final.recorded.get(replica, {}).get(tinyurl, 0)
        lost = max(0, made - recorded)
        allowed = sum(_within(windows.get(replica), r.started) for r in clicks) if lost else 0
        totals.update(clicks_made=made, clicks_unknown=unknown, clicks_recorded=recorded,
                      clicks_lost=lost, clicks_lost_allowed=min(lost, allowed))
        counts = f"made {made}, not answered {unknown}, recorded {recorded}"
        if recorded > made + unknown:
            violations.append(Violation(
                4, tinyurl, replica, f"{replica} {tinyurl}: counted twice: {counts}",
                run.touching(replica)))
        if lost > allowed:
            violations.append(Violation(
                4, tinyurl, replica, f"{replica} {tinyurl}: lost {lost} clicks ({counts}), at "
                f"most {allowed} allowed by faults that may lose them", run.touching(replica)))
    for name in ("clicks_made", "clicks_recorded", "clicks_unknown", "clicks_lost",
                 "clicks_lost_allowed"):
        figures[name] = totals[name]
    return violations


# --- 5: readiness -----------------------------------------------------------------------------

def _check_ready(final: Final, limit: float, run: _Run,
                 figures: dict[str, int | float]) -> list[Violation]:
    known = [after for after in final.ready_after.values() if after is not None]
    figures["ready_after_max"] = max(known, default=0.0)
    figures["replicas_never_ready"] = len(final.ready_after) - len(known)
    end = max((f.healed for f in run.faults), default=run.start)
    violations = []
    for replica, after in sorted(final.ready_after.items()):
        if after is None or after > limit:
            said = "never said ready" if after is None else f"said ready after {after:.1f}s"
            violations.append(Violation(
                5, None, replica, f"{replica} {said} (limit {limit:.0f}s after the faults "
                f"ended at {run.t(end)})", run.near(end, end)))
    return violations


def _delays_records(fault: Fault, replica: str) -> bool:
    """Whether `fault` may keep records of the links topic from reaching `replica`'s Redis: as
    consume_links down does, its Redis refusing writes (full) keeps it from applying them until
    its retries after the fault (found by the ten-minute run on the scale topology: a link made
    during a full Redis answered 404 three seconds after it ended)."""
    return (fault.target in ("kafka", f"{replica}/links", f"{replica}>svc")
            or (fault.kind == "isolate" and fault.target == replica)
            or (fault.kind == "redis-full" and fault.target == replica)
            or _hits_brokers(fault, replica))


def _room_windows(faults: list[Fault], replica: str, grace: float
                  ) -> tuple[list[float], list[float]]:
    """The merged spans (starts, ends) when records may be held back from `replica`: each
    delaying fault from its start until `grace` s after it healed (reconnects, TCP back-off)."""
    spans = sorted((f.started, f.healed + grace) for f in faults if _delays_records(f, replica))
    joined: list[list[float]] = []
    for start, end in spans:
        if joined and start <= joined[-1][1]:
            joined[-1][1] = max(joined[-1][1], end)
        else:
            joined.append([start, end])
    return [a for a, _ in joined], [b for _, b in joined]


def _had_room(windows: tuple[list[float], list[float]], since: float, until: float,
              lag: float) -> bool:
    """Whether [since, until] holds `lag` seconds in a row outside every span of `windows`."""
    starts, ends = windows
    free_from = since
    i = bisect_right(ends, since)  # the first span that ends after `since`
    while free_from + lag <= until:
        if i >= len(starts) or starts[i] >= free_from + lag:
            return True
        free_from = max(free_from, ends[i])
        i += 1
    return False


def _check_said_ready(links: dict[str, list[Op]], groups: dict[tuple[str, str], list[Read]],
                      run: _Run, lag: float, grace: float,
                      figures: dict[str, int | float]) -> list[Violation]:
    windows = {replica: _room_windows(run.faults, replica, grace)
               for replica in {replica for replica, _ in groups}}
    violations, checked = [], 0
    for (replica, tinyurl), reads in sorted(groups.items()):
        ops = links.get(tinyurl)
        if not ops or ops[0].kind != "create":
            continue
        bad: list[tuple[Read, Op]] = []
        # A 404 after the replica had served the link is a 3 already (monotonic reads).
        served_by = min((r.ended for r in reads if r.status == 302), default=float("inf"))
        for read in reads:
            if read.status != 404 or read.started > served_by:
                continue
            acked = [op for op in ops if op.outcome == "ok" and op.completed <= read.started - lag]
            if not acked:
                continue
            # Any state from the last one acknowledged in time on, asked for before the read
            # ended, may be what it served: a 404 is explained if one of them is down.
            later = ops[ops.index(acked[-1]):]
            if any(not op.state.active for op in later if op.invoked <= read.ended):
                continue
            checked += 1
            if _had_room(windows[replica], acked[-1].completed, read.started, lag):
                bad.append((read, acked[-1]))
        if bad:
            read, op = bad[0]
            more = f"; {len(bad) - 1} more such reads until {run.t(bad[-1][0].started)}" \
                if len(bad) > 1 else ""
            violations.append(Violation(
                5, tinyurl, replica, f"{replica} answered 404 (which says it is ready) for "
                f"{tinyurl} in a read at {run.t(read.started)}, "
                f"{read.started - op.completed:.1f}s after {_shown(op.state)} "
                f"({_op_shown(op, run)}), with {lag:.0f}s in a row for it to arrive{more}",
                run.touching(replica, op.completed)))
    figures["reads_404_checked_ready"] = checked
    return violations


# --- the report --------------------------------------------------------------------------------

def _fault_shown(fault: Fault, start: float) -> str:
    loses = f", may lose {fault.loses_clicks_on}'s clicks" if fault.loses_clicks_on else ""
    return f"{fault.kind} {fault.target} {fault.started - start:.3f}s-" \
           f"{fault.healed - start:.3f}s{loses}"


def report(verdict: Verdict) -> str:
    """A summary for a human: the figures, then the first violations with their faults."""
    lines = ["figures:"]
    lines += [f"  {name}: {value:.3f}" if isinstance(value, float) else f"  {name}: {value}"
              for name, value in verdict.figures.items()]
    count = len(verdict.violations)
    lines.append(f"violations: {count}" + (" (none: every guarantee held)" if not count else ""))
    for v in verdict.violations[:SHOWN]:
        lines.append(f"  [{v.guarantee}] {v.message}")
        shown = [_fault_shown(f, verdict.start) for f in v.faults[:FAULTS_SHOWN]]
        if len(v.faults) > FAULTS_SHOWN:
            shown.append(f"and {len(v.faults) - FAULTS_SHOWN} more")
        lines.append("      faults: " + ("; ".join(shown) if shown else "none"))
    if count > SHOWN:
        lines.append(f"  ... and {count - SHOWN} more")
    return "\n".join(lines)
