"""The randomized fault schedule for real (tools/chaos): two minutes of kills, pauses, partitions,
wipes, rollbacks and full Redis on the three hosts in network namespaces, under client load, then
the checker of every guarantee over what the clients saw. The ten-minute runs are `make chaos`
(their figures: docs/delivery-guarantees.md).

Runs as root only (network namespaces); otherwise skipped with the reason. Its own Kafka and
PostgreSQL, on free ports, like `make chaos`: nothing of the suite's services is touched.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.timeout(600),
]

# A seed whose two minutes inject every kind of fault (tests/chaos/test_schedule.py checks
# that it does, so a change of the schedule's rules cannot quietly make this run gentler).
SEED = 8


def test_two_minutes_of_faults_break_no_guarantee(test_data_dir, capsys):
    data = test_data_dir / "chaos"
    run = subprocess.Popen(
        [sys.executable, "-m", "tools.chaos", "--minutes", "2", "--seed", str(SEED),
         "--data", str(data)],
        cwd=settings.BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = run.communicate(timeout=520)
    except subprocess.TimeoutExpired:
        run.terminate()  # SIGTERM: the run removes its namespaces and processes, then exits
        out, err = run.communicate(timeout=60)
    summary = out[out.find("chaos run:"):]
    with capsys.disabled():
        print("\n" + summary[-3000:])
    assert run.returncode == 0, (run.returncode, summary[-6000:], err[-4000:])
    assert "violations: 0" in summary, summary[-3000:]
