"""The chaos run's fault schedule (tools/chaos/schedule.py): a pure function of its seed and
length, and within its own rules whatever the seed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tools.chaos.schedule import (DURATIONS, LEAD_IN, LEAD_OUT, MAX_ACTIVE, PROCESSES, WEIGHTS,
                                  draw)

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
