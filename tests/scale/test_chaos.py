"""The randomized fault schedule and its checker (tools/chaos) on the deployment topology
(testkit/scale.py: three Kafka brokers, two masters behind HAProxy, five replicas): a short seed
here; ten minutes by command (`python -m tools.chaos --topology scale --minutes 10 --seed N`).

Root only (network namespaces). Its own Kafka brokers and PostgreSQL on their own addresses and
ports: nothing of the suite's services is touched.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings

pytestmark = [
    pytest.mark.scale,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.timeout(900),
]

# A seed whose schedule hits brokers, masters and the balancer (tests/chaos/test_schedule.py
# checks that it does), for this many minutes.
SEED = 9
MINUTES = 2


def test_a_short_seed_on_the_scale_topology_breaks_no_guarantee(test_data_dir, capsys):
    data = test_data_dir / "chaos-scale"
    run = subprocess.Popen(
        [sys.executable, "-m", "tools.chaos", "--topology", "scale", "--minutes", str(MINUTES),
         "--seed", str(SEED), "--data", str(data)],
        cwd=settings.BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = run.communicate(timeout=820)
    except subprocess.TimeoutExpired:
        run.terminate()  # SIGTERM: the run removes its namespaces and processes, then exits
        out, err = run.communicate(timeout=60)
    summary = out[out.find("chaos run:"):]
    with capsys.disabled():
        print("\n" + summary[-3000:])
    assert run.returncode == 0, (run.returncode, summary[-6000:], err[-4000:])
    assert "violations: 0" in summary, summary[-3000:]
