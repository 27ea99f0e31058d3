"""deploy/systemd: the units render for both roles and pass `systemd-analyze verify`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from testkit import ROOT


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


@pytest.mark.parametrize("role,unit", [("master", "shortener-master-web"),
                                       ("replica", "shortener-replica-web")])
def test_web_units_file_descriptors_cover_the_connection_limit(tmp_path, role, unit):
    """LimitNOFILE (per process) covers a worker's worker_connections, as gunicorn.conf.py sets
    it by default for the role, and the descriptors a worker needs besides."""
    from runtime.serving import DESCRIPTORS_BESIDES_CONNECTIONS

    subprocess.run(["bash", "deploy/install-systemd.sh", role, "root"], cwd=ROOT, check=True,
                   env={**os.environ, "DESTDIR": str(tmp_path)})
    lines = (tmp_path / f"{unit}.service").read_text().splitlines()
    limits = [int(line.split("=", 1)[1]) for line in lines if line.startswith("LimitNOFILE=")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUNICORN_")}
    printed = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--print-config", "shortener_project.wsgi"],
        cwd=ROOT, env={**env, "SHORTENER_ROLE": role}, capture_output=True, text=True,
        timeout=60).stdout
    settings = {name.strip(): value.strip() for name, _, value in
                (line.partition(" = ") for line in printed.splitlines() if " = " in line)}
    connections = int(settings["worker_connections"])
    assert settings["worker_class"] == "runtime.serving.Worker"
    assert len(limits) == 1 and limits[0] >= connections + DESCRIPTORS_BESIDES_CONNECTIONS, (
        limits, connections)
