"""`make up`'s process group under supervisord (stack/supervisor/): a process that exits is
restarted with back-off and its exit status is printed, the others keep serving, every line of
output reaches the terminal prefixed by its program's name, and Ctrl-C (SIGINT) stops them all.

Run with a Procfile of the test's own (an HTTP server and a program that crashes) in a
directory of its own, so the shared services and any `make up` cluster are never touched."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from testkit import ROOT, free_port, port_open, wait_until

sys.path.insert(0, str(ROOT / "stack" / "supervisor"))
import render  # noqa: E402

SUPERVISORD = Path(sys.executable).parent / "supervisord"


class Supervisord:
    """supervisord in the foreground, as stack/up.sh runs it; its terminal output collected."""

    def __init__(self, conf: Path) -> None:
        self.proc = subprocess.Popen([str(SUPERVISORD), "-c", str(conf)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.output()))


@pytest.fixture
def group(tmp_path):
    """supervisord running `web` (an HTTP server) and `crash` (prints a line, exits 3)."""
    port = free_port()
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        "# test-only program set\n"
        f"web: $TEST_PYTHON -m http.server --bind 127.0.0.1 {port}\n"
        "crash: $TEST_PYTHON -c \"print('crash is starting', flush=True); raise SystemExit(3)\"\n")
    env_python = os.environ.get("TEST_PYTHON")
    os.environ["TEST_PYTHON"] = sys.executable
    try:
        conf_text = render.render(render.procfile_parse(procfile.read_text()),
                                  workdir=tmp_path, rundir=tmp_path)
    finally:
        if env_python is None:
            del os.environ["TEST_PYTHON"]
        else:
            os.environ["TEST_PYTHON"] = env_python
    conf = tmp_path / "supervisord.conf"
    conf.write_text(conf_text)
    sup = Supervisord(conf)
    sup.port = port
    yield sup
    if sup.proc.poll() is None:
        sup.proc.send_signal(signal.SIGINT)
        try:
            sup.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sup.proc.kill()
            sup.proc.wait()


def test_a_crashed_process_is_restarted_with_back_off_and_the_others_keep_serving(group):
    wait_until(lambda: port_open(group.port), timeout=30, what="the web program")
    # The crash is printed with its exit status, and the program is started again, each time
    # after a longer wait (supervisord's back-off: 1 s, 2 s, ...).
    wait_until(lambda: group.count(r"spawned: 'crash'") >= 3, timeout=30,
               what="crash to be restarted twice")
    assert group.count(r"exited: crash \(exit status 3; not expected\)") >= 2
    assert re.search(r"^crash +\| crash is starting$", group.output(), re.M), group.output()
    # Meanwhile the web program was never restarted, and it answers.
    assert group.count(r"spawned: 'web'") == 1
    response = requests.get(f"http://127.0.0.1:{group.port}/", timeout=5)
    assert response.status_code == 200
    # Its own output (the access log line) reaches the terminal, prefixed by its name.
    wait_until(lambda: re.search(r'^web +\| .*"GET / HTTP/1.1" 200', group.output(), re.M),
               timeout=10, what="web's access log line")


def test_ctrl_c_stops_every_program(group):
    wait_until(lambda: port_open(group.port), timeout=30, what="the web program")
    group.proc.send_signal(signal.SIGINT)
    assert group.proc.wait(timeout=30) == 0
    assert not port_open(group.port)
    assert "stopped: web" in group.output()


def test_the_projects_procfile_renders_every_process(monkeypatch):
    # What stack/up.sh exports: every $VARIABLE of the Procfile.
    ports = {"REDIS_PORT_1": "1", "REDIS_PORT_2": "2", "WEB_PORT_MASTER": "3", "WEB_PORT_1": "4",
             "WEB_PORT_2": "5", "METRICS_PORT_CLICKS": "6", "METRICS_PORT_OUTBOX": "7",
             "METRICS_PORT_LINKS_1": "8", "METRICS_PORT_REPORT_1": "9",
             "METRICS_PORT_LINKS_2": "10", "METRICS_PORT_REPORT_2": "11"}
    monkeypatch.setenv("VENV", os.environ.get("VENV") or str(Path(sys.executable).parent.parent))
    for name, value in ports.items():
        monkeypatch.setenv(name, value)
    programs = render.procfile_parse((ROOT / "stack" / "Procfile").read_text())
    names = [name for name, _ in programs]
    assert names == ["master", "outbox", "clicks", "replica1", "links1", "report1",
                     "replica2", "links2", "report2"]
    conf = render.render(programs, workdir=ROOT, rundir=ROOT / ".local")
    for name in names:
        assert f"[program:{name}]" in conf
    assert "$" not in conf.replace("$$", ""), "a $VARIABLE of the Procfile that up.sh does not export"
    assert conf.count("autorestart=true") == len(names)


@pytest.mark.parametrize("text", ["master gunicorn\n", "a: x\na: y\n"])
def test_a_procfile_line_that_is_not_name_colon_command_is_a_clear_error(text):
    with pytest.raises(ValueError, match="Procfile line"):
        render.procfile_parse(text)
