"""tools/loadgen.py: the homework's load generator doubles as an end-to-end check."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testkit import ROOT, MasterWeb


@pytest.fixture
def master_web(transactional_db, test_data_dir):
    web = MasterWeb(test_data_dir, workers=2)
    yield web
    web.close()


def loadgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/loadgen.py", "--no-progress", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_a_small_workload_gets_only_right_answers(master_web, replica_factory):
    r1, r2 = replica_factory(), replica_factory()
    result = loadgen("--master", master_web.url, "--replica", r1.url, "--replica", r2.url,
                     "--creates", "200", "--redirects", "1000", "--not-found", "500",
                     "--concurrency", "4", "--seed", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for phase, n in (("create", 200), ("redirect", 1000), ("not-found", 500)):
        line = next(line for line in out.splitlines() if line.startswith(phase))
        assert f"{n} req" in line and line.endswith("wrong 0"), line
    assert "wrong answers: 0" in out


def test_wrong_answers_are_caught_and_fail_the_run(master_web, replica_factory):
    # A replica whose consume_links never runs cannot know the new links, nor, never ready,
    # that the unknown ones do not exist: every redirect and every not-found is a 503.
    stale = replica_factory(start=False)
    stale.start_web()
    result = loadgen("--master", master_web.url, "--replica", stale.url, "--creates", "20",
                     "--redirects", "30", "--not-found", "10", "--wait", "1")
    assert result.returncode == 1
    assert "wrong answers: 40" in result.stdout
    assert "expected 404, got 503" in result.stdout
    assert "expected" not in result.stdout.split("redirect")[0]  # creates were all right
