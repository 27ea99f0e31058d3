"""deploy/systemd: the units render for both roles and pass `systemd-analyze verify`."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support import ROOT


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (apt-get install systemd)")
@pytest.mark.parametrize("role,units,timers", [
    ("master", ["shortener-master-web", "shortener-outbox", "shortener-consume-clicks"],
     ["shortener-prune"]),
    ("replica", ["shortener-replica-web", "shortener-consume-links", "shortener-report-clicks"],
     []),
])
def test_units_render_and_verify(tmp_path, role, units, timers):
    subprocess.run(["bash", "deploy/install-systemd.sh", role, "root"], cwd=ROOT, check=True,
                   env={**os.environ, "DESTDIR": str(tmp_path)})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted([f"{u}.service" for u in units + timers]
                           + [f"{t}.timer" for t in timers] + [f"shortener-{role}.target"])
    for timer in timers:
        text = (tmp_path / f"{timer}.timer").read_text()
        assert "OnCalendar=hourly" in text and "Persistent=true" in text
        assert "Type=oneshot" in (tmp_path / f"{timer}.service").read_text()
    for unit in units + timers:
        text = (tmp_path / f"{unit}.service").read_text()
        assert "@ROOT@" not in text and f"WorkingDirectory={ROOT}" in text
        assert f"EnvironmentFile=/etc/shortener/{role}.env" in text
        assert "Restart=on-failure" in text and "KillSignal=SIGTERM" in text
    result = subprocess.run(["systemd-analyze", "verify",
                             *[str(p) for p in sorted(tmp_path.iterdir())]],
                            capture_output=True, text=True, timeout=60)
    # verify only warns (exit 0) about a setting it cannot parse: any output is a failure.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr)
