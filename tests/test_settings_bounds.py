"""Settings whose bounds carry a guarantee are refused at start outside them: a process does not
run on a value that would quietly break what the docs promise.

SHORTENER_CLICKS_SWEEP_SECONDS: at most 3 days, so that a sweep is always among the 7 days of
the clicks topic's retention (redirects/sweep.py, docs/delivery-guarantees.md).
SHORTENER_CLICKS_DAYS_KEEP: 0 or at least the admin's 90-day daily chart (docs/storage.md).
SHORTENER_LEADER_*: above 0; the stale bound above a check's interval plus its deadline
(runtime/leadership.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testkit import ROOT


def _check(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT,
                          env={**os.environ, "SHORTENER_ROLE": "replica", **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name,value,message", [
    ("SHORTENER_CLICKS_SWEEP_SECONDS", "0", "must be in (0, 259200]"),
    ("SHORTENER_CLICKS_SWEEP_SECONDS", "-1", "must be in (0, 259200]"),
    ("SHORTENER_CLICKS_SWEEP_SECONDS", "259201", "must be in (0, 259200]"),
    ("SHORTENER_CLICKS_SWEEP_SECONDS", "604800", "must be in (0, 259200]"),
    ("SHORTENER_CLICKS_DAYS_KEEP", "89", "at least 90"),
    ("SHORTENER_CLICKS_DAYS_KEEP", "1", "at least 90"),
    ("SHORTENER_READY_STALE_SECONDS", "0", "must be in [10, 86400]"),
    ("SHORTENER_READY_STALE_SECONDS", "5", "must be in [10, 86400]"),
    # A standby retrying (or a holder checking) with no pause would hammer PostgreSQL.
    ("SHORTENER_LEADER_RETRY_SECONDS", "0", "both must be above 0"),
    ("SHORTENER_LEADER_CHECK_SECONDS", "-1", "both must be above 0"),
    # A stale bound within a check's interval and deadline would cut off a slow working holder.
    ("SHORTENER_LEADER_STALE_SECONDS", "6", "must be above"),
])
def test_a_value_that_breaks_a_guarantee_stops_the_process_with_its_bound(name, value, message):
    result = _check(**{name: value})
    assert result.returncode != 0
    assert f"{name}=" in result.stderr and message in result.stderr


@pytest.mark.parametrize("name,value", [
    ("SHORTENER_CLICKS_SWEEP_SECONDS", "259200"),  # the bound itself: 3 days
    ("SHORTENER_CLICKS_SWEEP_SECONDS", "0.5"),
    ("SHORTENER_CLICKS_DAYS_KEEP", "0"),
    ("SHORTENER_CLICKS_DAYS_KEEP", "90"),
    ("SHORTENER_READY_STALE_SECONDS", "10"),
    ("SHORTENER_LEADER_STALE_SECONDS", "6.5"),
])
def test_a_value_within_the_bounds_starts(name, value):
    result = _check(**{name: value})
    assert result.returncode == 0, result.stderr
