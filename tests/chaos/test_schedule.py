"""The chaos run's fault schedule (tools/chaos/schedule.py): a pure function of its seed and
length, and within its own rules whatever the seed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tools.chaos.schedule import (DURATIONS, LEAD_IN, LEAD_OUT, MAX_ACTIVE, PROCESSES, SCALE,
                                  THREE_HOSTS, WEIGHTS, draw)

seeds = st.integers(min_value=0, max_value=2**32)
lengths = st.floats(min_value=20, max_value=900)


@settings(max_examples=60, deadline=None)
@given(seeds, lengths)
def test_the_same_seed_draws_the_same_schedule(seed, seconds):
    assert draw(seed, seconds) == draw(seed, seconds)


@settings(max_examples=60, deadline=None)
@given(seeds, lengths)
def test_every_fault_keeps_the_rules(seed, seconds):
    plan = draw(seed, seconds)
    assert [p.at for p in plan] == sorted(p.at for p in plan)
    for i, fault in enumerate(plan):
        assert LEAD_IN <= fault.at and fault.at + fault.duration <= seconds - LEAD_OUT
        least, most = DURATIONS[fault.kind]
        assert least <= fault.duration <= most + 0.05  # rounded to 0.1 s
        if fault.kind in ("kill", "pause"):
            assert fault.target in PROCESSES
        active = [p for p in plan[:i] if p.at + p.duration > fault.at]
        assert len(active) < MAX_ACTIVE
        assert fault.holds() not in {p.holds() for p in active}, (fault, active)


def test_seeds_differ_and_a_long_run_draws_every_kind():
    ten_minutes = [draw(seed, 600) for seed in range(5)]
    assert len({tuple(plan) for plan in ten_minutes}) == 5
    for plan in ten_minutes:
        assert len(plan) >= 60  # about one fault every 4 s, some held back by the rules
    assert {p.kind for plan in ten_minutes for p in plan} == set(WEIGHTS)


def test_the_suites_two_minute_seed_injects_every_kind_of_fault():
    from tests.chaos.test_run import SEED

    assert {fault.kind for fault in draw(SEED, 120)} == set(WEIGHTS)


@settings(max_examples=40, deadline=None)
@given(seeds, lengths)
def test_the_scale_topology_draws_its_own_targets_within_the_same_rules(seed, seconds):
    plan = draw(seed, seconds, topology=SCALE)
    assert plan == draw(seed, seconds, topology=SCALE)
    for i, fault in enumerate(plan):
        assert LEAD_IN <= fault.at and fault.at + fault.duration <= seconds - LEAD_OUT
        if fault.kind in ("kill", "pause"):
            assert fault.target in SCALE.processes
        elif fault.kind == "isolate":
            assert fault.target in SCALE.hosts
        elif fault.kind == "oneway":
            source, to = fault.target.split(">")
            assert source in SCALE.hosts and to in (*SCALE.hosts, "svc") and to != source
        else:
            assert fault.target in SCALE.replicas
        active = [p for p in plan[:i] if p.at + p.duration > fault.at]
        assert len(active) < MAX_ACTIVE
        assert fault.holds() not in {p.holds() for p in active}, (fault, active)


def test_the_default_topology_draws_what_it_drew_before_topologies():
    """A seed replays the schedule it drew before the scale topology existed (the figures in
    docs/delivery-guarantees.md name seeds)."""
    assert draw(7, 600) == draw(7, 600, topology=THREE_HOSTS)
    assert str(draw(8, 120)[0]) == "    4.0s redis-full     r1         for  3.5s"


def test_the_scale_suites_seed_hits_brokers_masters_and_the_balancer():
    from tests.scale.test_chaos import MINUTES, SEED

    targets = {fault.target.split("/")[0].split(">")[0]
               for fault in draw(SEED, MINUTES * 60, topology=SCALE)}
    assert {"k1", "k2", "k3"} & targets and {"m1", "m2"} & targets and "lb" in targets
