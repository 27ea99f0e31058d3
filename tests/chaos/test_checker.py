"""tools/chaos/checker.py on histories written by hand: a clean one passes, and each guarantee
broken on purpose is reported, and only that one. Then two properties: a simulated correct
replica (it applies a link's operations in order, each some time after it was asked for) never
breaks monotonic reads, and a read of an older state after a newer one always does.

Pure: no service, no Django; they run in the fast lane."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tools.chaos.checker import check, report
from tools.chaos.history import Fault, Final, History, Op, Read, State

A, B, X = "https://a.example/", "https://b.example/", "https://x.example/"


def op(tinyurl: str, kind: str, target: str, active: bool, invoked: float,
       outcome: str = "ok") -> Op:
    return Op(tinyurl, kind, State(target, active), invoked, invoked + 0.2, outcome)


def rd(replica: str, tinyurl: str, method: str, started: float, status: int | None,
       location: str | None = None, took: float = 0.05) -> Read:
    return Read(replica, tinyurl, method, started, started + took, status, location)


def clean() -> tuple[History, Final]:
    """Two links through retargets, a takedown and a put-back, read on two replicas through two
    faults; what a correct cluster would show."""
    ops = [op("abc", "create", A, True, 0), op("abc", "retarget", B, True, 10),
           op("abc", "takedown", B, False, 20),
           op("xyz", "create", X, True, 1), op("xyz", "takedown", X, False, 5),
           op("xyz", "putback", X, True, 8),
           op("", "create", A, True, 30, "unknown"),  # no answer: no tinyurl, never checked
           op("abc", "retarget", X, True, 25, "refused")]
    reads = [
        rd("r1", "abc", "GET", 0.0, 404),  # before the link reached r1: absent
        rd("r1", "abc", "GET", 1, 302, A), rd("r1", "abc", "GET", 2, 302, A),
        rd("r1", "abc", "GET", 3, None, took=5),  # no answer: maybe counted
        rd("r1", "abc", "HEAD", 4, 503),
        rd("r1", "abc", "GET", 11, 302, B), rd("r1", "abc", "GET", 13, 302, B),
        rd("r1", "abc", "HEAD", 21, 404), rd("r1", "abc", "GET", 22, 404),
        rd("r2", "abc", "GET", 0.5, 302, A),
        rd("r2", "abc", "GET", 10.1, 302, A),  # overlaps the retarget: the old state is fine
        rd("r2", "abc", "GET", 12, 302, B), rd("r2", "abc", "GET", 14, 302, B),
        rd("r2", "abc", "HEAD", 20.1, 404), rd("r2", "abc", "GET", 23, 410),
        rd("r1", "xyz", "GET", 2, 302, X), rd("r1", "xyz", "HEAD", 6, 404),
        rd("r1", "xyz", "GET", 9, 302, X),
        rd("r2", "xyz", "GET", 1.5, 404), rd("r2", "xyz", "GET", 9.5, 302, X)]
    faults = [Fault("kill", "r2/links", 12.5, 13.5), Fault("partition", "m|r1", 15, 17)]
    final = Final(
        master={"abc": State(B, False), "xyz": State(X, True)},
        served={r: {"abc": (404, None), "xyz": (302, X)} for r in ("r1", "r2")},
        recorded={"r1": {"abc": 4, "xyz": 2}, "r2": {"abc": 4, "xyz": 1}},
        ready_after={"r1": 2.5, "r2": 4.0})
    return History(ops=ops, reads=reads, faults=faults), final


def guarantees(history: History, final: Final, **kwargs) -> list[int]:
    return sorted(v.guarantee for v in check(history, final, **kwargs).violations)


def test_a_clean_history_has_no_violation():
    history, final = clean()
    verdict = check(history, final)
    assert verdict.violations == [], report(verdict)
    figures = verdict.figures
    assert (figures["ops_create_ok"], figures["ops_create_unknown"],
            figures["ops_retarget_refused"]) == (2, 1, 1)
    assert (figures["clicks_made"], figures["clicks_recorded"], figures["clicks_unknown"],
            figures["clicks_lost"]) == (11, 11, 1, 0)
    assert (figures["reads_3xx"], figures["reads_4xx"], figures["reads_5xx"],
            figures["reads_none"]) == (11, 7, 1, 1)
    assert (figures["faults_kill"], figures["ready_after_max"]) == (1, 4.0)
    assert "violations: 0" in report(verdict)


# --- 1 and 2: the end -------------------------------------------------------------------------

def test_1_a_link_missing_on_a_replica():
    history, final = clean()
    del final.served["r2"]["xyz"]
    verdict = check(history, final)
    assert [(v.guarantee, v.replica, v.tinyurl) for v in verdict.violations] == [(1, "r2", "xyz")]
    assert verdict.violations[0].faults == (history.faults[0],)  # the kill of r2's consumer


def test_1_the_master_lost_an_acknowledged_retarget():
    history, final = clean()
    final.master["xyz"] = State(A, True)
    final.served = {r: {"abc": (404, None), "xyz": (302, A)} for r in ("r1", "r2")}
    assert guarantees(history, final) == [1, 1, 1]  # the master, and both replicas


@pytest.mark.parametrize("held, served, expected", [
    (State(X, True), (302, X), []),  # the takedown did not take effect
    (State(X, False), (404, None), []),  # it did
    (State(X, False), (302, X), [2]),  # it did, but r1 missed it
    (State(A, True), (302, A), [1, 1, 1]),  # a state nobody asked for
])
def test_1_after_an_unknown_last_operation_replicas_follow_the_master(held, served, expected):
    # `held`, not `master`: a parameter named like a service fixture would leave the fast lane.
    history, final = clean()
    history.ops.append(op("xyz", "takedown", X, False, 40, "unknown"))
    final.master["xyz"] = held
    final.served["r1"]["xyz"] = served
    final.served["r2"]["xyz"] = (302, held.target) if held.active else (404, None)
    assert guarantees(history, final) == expected


def test_2_a_takedown_still_served_at_the_end():
    history, final = clean()
    final.served["r1"]["abc"] = (302, B)
    verdict = check(history, final)
    assert [(v.guarantee, v.replica, v.tinyurl) for v in verdict.violations] == [(2, "r1", "abc")]


# --- 3: monotonic reads -----------------------------------------------------------------------

def test_3_a_takedown_that_comes_back():
    history, final = clean()
    history.reads.append(rd("r1", "abc", "HEAD", 25, 302, B))
    verdict = check(history, final)
    assert [v.guarantee for v in verdict.violations] == [3], report(verdict)
    assert "after it had served state 2" in verdict.violations[0].message


def test_3_an_older_target_after_a_newer_one():
    history, final = clean()
    history.reads += [rd("r2", "abc", "HEAD", 15, 302, A), rd("r2", "abc", "HEAD", 16, 302, A)]
    verdict = check(history, final)
    assert [v.guarantee for v in verdict.violations] == [3], report(verdict)
    assert "1 more such reads" in verdict.violations[0].message  # the same regression, once


def test_3_a_404_before_the_link_reached_the_replica_is_no_violation():
    history = History(ops=[op("abc", "create", A, True, 10)],
                      reads=[rd("r1", "abc", "HEAD", 5, 404), rd("r1", "abc", "HEAD", 10.3, 404),
                             rd("r1", "abc", "HEAD", 11, 302, A)])
    assert guarantees(history, Final()) == []
    # ...but once the link was served, a 404 is the link vanishing.
    history.reads.append(rd("r1", "abc", "HEAD", 12, 404))
    assert guarantees(history, Final()) == [3]


@pytest.mark.parametrize("location", [A, B])
def test_3_a_read_overlapping_an_operation_may_see_either_state(location):
    history = History(ops=[op("abc", "create", A, True, 0), op("abc", "retarget", B, True, 10)],
                      reads=[rd("r1", "abc", "HEAD", 9.9, 302, location, took=0.2)])
    assert guarantees(history, Final()) == []


def test_3_a_state_served_before_it_was_asked_for():
    history = History(ops=[op("abc", "create", A, True, 0), op("abc", "retarget", B, True, 10)],
                      reads=[rd("r1", "abc", "HEAD", 9, 302, B)])
    verdict = check(history, Final())
    assert [v.guarantee for v in verdict.violations] == [3]
    assert "before it was asked for" in verdict.violations[0].message


def test_3_overlapping_reads_bind_each_other_in_neither_order():
    history = History(ops=[op("abc", "create", A, True, 0), op("abc", "retarget", B, True, 10)],
                      reads=[rd("r1", "abc", "HEAD", 10, 302, B, took=2),
                             rd("r1", "abc", "HEAD", 10.5, 302, A)])
    assert guarantees(history, Final()) == []
    history.reads.append(rd("r1", "abc", "HEAD", 12.5, 302, A))  # after the first one ended
    assert guarantees(history, Final()) == [3]


def test_3_a_refused_operation_is_a_state_never_asked_for():
    history, final = clean()
    history.reads.append(rd("r2", "abc", "HEAD", 26, 302, X))  # the refused retarget's target
    verdict = check(history, final)
    assert [v.guarantee for v in verdict.violations] == [3]
    assert "never asked for" in verdict.violations[0].message


# --- 4: clicks --------------------------------------------------------------------------------

def test_4_counted_twice():
    history, final = clean()
    final.recorded["r2"]["abc"] = 5  # 4 made, none unanswered
    verdict = check(history, final)
    assert [(v.guarantee, v.replica) for v in verdict.violations] == [(4, "r2")]
    assert "counted twice" in verdict.violations[0].message


def test_4_unanswered_clicks_may_have_been_counted():
    history, final = clean()
    final.recorded["r1"]["abc"] = 5  # 4 made and 1 unanswered
    assert guarantees(history, final) == []
    final.recorded["r1"]["abc"] = 6
    assert guarantees(history, final) == [4]


def test_4_clicks_lost_without_a_fault_that_may_lose_them():
    history, final = clean()
    final.recorded["r1"]["abc"] = 2  # the kill of r2/links loses nothing, and not r1's
    verdict = check(history, final)
    assert [v.guarantee for v in verdict.violations] == [4]
    assert "lost 2 clicks" in verdict.violations[0].message
    assert verdict.figures["clicks_lost"] == 2 and verdict.figures["clicks_lost_allowed"] == 0


def test_4_clicks_lost_within_a_wipes_window_are_allowed():
    history, final = clean()
    # r1's clicks of abc at 11 and 13 fall in [12 - 5 s, 14]; those at 1 and 2 do not.
    history.faults.append(Fault("wipe", "r1/redis", 12, 14, loses_clicks_on="r1"))
    final.recorded["r1"]["abc"] = 2
    verdict = check(history, final)
    assert verdict.violations == [], report(verdict)
    assert verdict.figures["clicks_lost"] == 2 and verdict.figures["clicks_lost_allowed"] == 2
    final.recorded["r1"]["abc"] = 1
    assert guarantees(history, final) == [4]


def test_4_a_wipe_while_reports_were_held_back_may_lose_every_click_since():
    """Kafka down from 0.5 s to 12 s: r1 could report nothing of abc's clicks at 1 and 2 (nor
    of those at 11), so a wipe at 12 may lose them all; a wipe with no such fault before it
    only those of its flush interval (the test above)."""
    history, final = clean()
    history.faults += [Fault("kill", "kafka", 0.5, 12),
                       Fault("redis-wipe", "r1", 12, 12.01, loses_clicks_on="r1")]
    final.recorded["r1"]["abc"] = 0  # 4 made (1, 2, 11, 13): 13 was after the wipe
    assert guarantees(history, final) == [4]
    final.recorded["r1"]["abc"] = 1
    assert guarantees(history, final) == []
    history.faults[-2] = Fault("isolate", "r1", 0.5, 12)  # cut off from Kafka: the same
    assert guarantees(history, final) == []
    history.faults[-2] = Fault("isolate", "r2", 0.5, 12)  # another host: only 11 may go
    assert guarantees(history, final) == [4]


def test_4_a_click_answered_503_may_have_been_counted():
    """Redis may time out after the click script ran: the GET is answered 503 and counted."""
    history, final = clean()
    history.reads.append(rd("r2", "xyz", "GET", 9.8, 503, took=5))
    final.recorded["r2"]["xyz"] = 2  # 1 answered 302, 1 answered 503
    assert guarantees(history, final) == []
    final.recorded["r2"]["xyz"] = 3
    assert guarantees(history, final) == [4]


def test_4_a_wipe_on_one_replica_allows_no_loss_on_another():
    history, final = clean()
    history.faults.append(Fault("wipe", "r1/redis", 12, 14, loses_clicks_on="r1"))
    final.recorded["r2"]["abc"] = 2
    assert guarantees(history, final) == [4]


# --- 5: readiness -----------------------------------------------------------------------------

def test_5_a_replica_never_ready():
    history, final = clean()
    final.ready_after["r2"] = None
    verdict = check(history, final)
    assert [(v.guarantee, v.replica) for v in verdict.violations] == [(5, "r2")]
    assert verdict.figures["replicas_never_ready"] == 1


def test_5_a_replica_ready_too_late():
    history, final = clean()
    final.ready_after["r1"] = 130.0
    assert guarantees(history, final) == [5]
    assert guarantees(history, final, ready_limit=150.0) == []


def test_report_prints_the_first_violations_and_counts_the_rest():
    history, final = clean()
    final.ready_after = {f"r{n}": None for n in range(25)}
    text = report(check(history, final))
    assert "violations: 25" in text and "... and 5 more" in text
    assert text.count("never said ready") == 20 and "clicks_made: 11" in text


# --- properties: a correct replica, and one that goes back -----------------------------------

TARGETS = st.sampled_from([A, B, X])


@st.composite
def runs(draw, least: int = 1) -> tuple[list[Op], list[Read], list[int]]:
    """A link's operations, and reads of a replica that applies them in order, each some time
    after it was invoked (an unknown one maybe never); with each read, the index of the state it
    saw among the operations that were not refused (-1: none yet). At least `least` operations
    and reads."""
    n = draw(st.integers(least, 7))
    ops: list[Op] = []
    applied: list[tuple[float, int, State]] = []  # (when, index among the not refused, state)
    now = last_applied = 0.0
    state = State(draw(TARGETS), True)
    for i in range(n):
        kind = "create" if i == 0 else draw(st.sampled_from(["retarget", "takedown", "putback"]))
        new = {"create": state, "retarget": State(draw(TARGETS), state.active),
               "takedown": State(state.target, False), "putback": State(state.target, True)}[kind]
        outcomes = ["ok"] if i == 0 else ["ok", "ok", "refused"] + (["unknown"] * (i == n - 1))
        outcome = draw(st.sampled_from(outcomes))
        invoked = now + draw(st.integers(1, 30)) / 10
        now = invoked + draw(st.integers(0, 20)) / 10
        ops.append(Op("l", kind, new, invoked, now, outcome))
        if outcome == "ok" or (outcome == "unknown" and draw(st.booleans())):
            last_applied = max(last_applied, invoked + draw(st.integers(0, 50)) / 10)
            applied.append((last_applied, sum(o.outcome != "refused" for o in ops) - 1, new))
        if outcome == "ok":
            state = new
    reads, seen = [], []
    for start, took, at in draw(st.lists(st.tuples(st.integers(0, int(now * 10) + 50),
                                                   st.integers(0, 50), st.floats(0, 1)),
                                         min_size=least, max_size=40)):
        started, ended = start / 10, (start + took) / 10
        instant = started + (ended - started) * at  # when the replica answered
        index, shown = max(((k, s) for when, k, s in applied if when <= instant),
                           default=(-1, None), key=lambda pair: pair[0])
        status, location = (302, shown.target) if shown and shown.active else (404, None)
        reads.append(Read("r1", "l", "HEAD", started, ended, status, location))
        seen.append(index)
    return ops, reads, seen


PROPERTIES = hsettings(max_examples=150, deadline=None)


@PROPERTIES
@given(runs())
def test_a_replica_that_applies_operations_in_order_reads_monotonically(run):
    ops, reads, _ = run
    verdict = check(History(ops=ops, reads=reads), Final())
    assert verdict.violations == [], report(verdict)


def _key(state: State) -> tuple:
    return (state.target,) if state.active else ()


@PROPERTIES
@given(runs(least=3), st.data())
def test_an_older_state_read_after_a_newer_one_is_a_violation(run, data):
    ops, reads, seen = run
    states = [o.state for o in ops if o.outcome != "refused"]
    keys = [_key(s) for s in states]
    # (read, older index): the older state's value is not shown by any later state, and the
    # read's value by no state up to the older one, so nothing explains the older after it. A
    # 404 shows a newer state only once a redirect was seen before it: else the link may not
    # have reached the replica yet.
    def shown(n: int) -> bool:
        return keys[seen[n]] != () or any(
            seen[m] >= 0 and keys[seen[m]] != () and reads[m].ended < reads[n].started
            for m in range(len(reads)))

    candidates = [(n, i) for n, j in enumerate(seen) for i in range(max(j, 0))
                  if keys[i] not in keys[i + 1:] and keys[j] not in keys[:i + 1] and shown(n)]
    assume(candidates)
    n, i = data.draw(st.sampled_from(candidates))
    status, location = (302, states[i].target) if states[i].active else (404, None)
    late = replace(reads[n], started=reads[n].ended + 0.01, ended=reads[n].ended + 0.02,
                   status=status, location=location)
    verdict = check(History(ops=ops, reads=reads + [late]), Final())
    assert [v.guarantee for v in verdict.violations] == [3], report(verdict)


# --- 5: a 404 says "ready" ---------------------------------------------------------------------

def _late_404(faults: list[Fault], read_at: float = 30.0) -> tuple[History, Final]:
    """A link created at 0 (acknowledged at 0.2), served by r1 at 1, then a 404 on r2 at
    `read_at`: r2 never got it, yet said it was ready."""
    ops = [op("lat", "create", A, True, 0)]
    reads = [rd("r1", "lat", "GET", 1, 302, A), rd("r2", "lat", "HEAD", read_at, 404)]
    final = Final(master={"lat": State(A, True)},
                  served={r: {"lat": (302, A)} for r in ("r1", "r2")},
                  recorded={"r1": {"lat": 1}}, ready_after={"r1": 1.0, "r2": 1.0})
    return History(ops=ops, reads=reads, faults=faults), final


def test_a_404_long_after_the_create_with_room_to_arrive_is_a_5():
    history, final = _late_404([])
    violations = check(history, final).violations
    assert [(v.guarantee, v.replica) for v in violations] == [(5, "r2")]
    assert "404 (which says it is ready)" in violations[0].message
    # A wipe is no excuse: the replica must not say it is ready until it holds its links again.
    history, final = _late_404([Fault("redis-wipe", "r2", 5, 5, loses_clicks_on="r2")])
    assert guarantees(history, final) == [5]


@pytest.mark.parametrize("fault", [
    Fault("kill", "kafka", 1, 20), Fault("pause", "r2/links", 2, 10),
    Fault("isolate", "r2", 0.5, 12), Fault("oneway", "r2>svc", 3, 9)])
def test_a_404_is_excused_while_records_may_be_held_back(fault):
    # The fault and its grace (30 s after healing) leave no 10 s in a row before the read.
    history, final = _late_404([fault], read_at=fault.healed + 35)
    assert guarantees(history, final) == []
    # Once 10 s in a row were free of it, the same 404 is a 5.
    history, final = _late_404([fault], read_at=fault.healed + 41)
    assert guarantees(history, final) == [5]


def test_a_404_soon_after_the_create_or_of_a_link_taken_down_is_no_5():
    history, final = _late_404([], read_at=9.0)  # within the 10 s a record may take
    assert guarantees(history, final) == []
    history, final = _late_404([])
    history.ops.append(op("lat", "takedown", A, False, 29.0, "unknown"))  # may be down
    final.master["lat"] = State(A, False)
    final.served = {r: {"lat": (404, None)} for r in ("r1", "r2")}
    assert guarantees(history, final) == []
    # Faults elsewhere excuse nothing: r1's consume_links, the master's relay, PostgreSQL.
    history, final = _late_404([Fault("kill", "r1/links", 1, 25), Fault("kill", "m/outbox", 1, 25),
                                Fault("pause", "postgres", 2, 20)])
    assert guarantees(history, final) == [5]
