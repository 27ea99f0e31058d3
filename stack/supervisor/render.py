"""Render a supervisord configuration from a Procfile, for `make up` (stack/up.sh).

usage: python render.py PROCFILE WORKDIR RUNDIR > supervisord.conf

Each `name: command` line of the Procfile becomes a [program:name] run from WORKDIR, with
$VARIABLES expanded from this environment (stack/up.sh exports them). supervisord's own socket,
pid file and log go to RUNDIR, its log to the terminal. Every program's output reaches the
terminal through the event listener stack/supervisor/prefix.py, one line at a time, prefixed by
the program's name (supervisord has no such option of its own).

Why our own renderer: supervisord reads only its INI format, and the Procfile stays the one
list of the local cluster's processes (the README and docs/metrics.md describe it).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")

# A process that exits is restarted. One that exits within STARTSECS of its start counts as a
# failed start: supervisord waits 1 s, 2 s, 3 s ... before the next try (its back-off, one
# second more per failure) and gives up when its STARTRETRIES-th retry in a row fails too (the
# program is then FATAL and stays down, the rest keeps running). One that ran longer is
# restarted at once.
# Source: supervisor 4.3.0, supervisor/process.py (Subprocess.transition and change_state:
# backoff += 1, delay = now + backoff; FATAL once backoff > startretries).
STARTSECS = 5
STARTRETRIES = 10
# SIGTERM, then SIGKILL after this many seconds, to the program's whole process group
# (gunicorn's workers too): time for a consumer to finish its batch and a web server to answer
# the requests it holds, as the systemd units allow (deploy/systemd, TimeoutStopSec=30, is the
# bound in production; a local Ctrl-C need not wait that long).
STOPWAITSECS = 15


def procfile_parse(text: str) -> list[tuple[str, str]]:
    """[(name, command)] of a Procfile's `name: command` lines; '#' lines and blanks skipped.

    Raises ValueError naming the line for anything else, or a name given twice."""
    programs: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        if not match:
            raise ValueError(f"Procfile line {number} is not `name: command`: {raw!r}")
        name, command = match.groups()
        if name in {n for n, _ in programs}:
            raise ValueError(f"Procfile line {number}: program {name!r} is given twice")
        programs.append((name, command))
    return programs


def _ini(value: str) -> str:
    # supervisord expands %(name)s in its values: a literal % is written %%.
    return value.replace("%", "%%")


def render(programs: list[tuple[str, str]], *, workdir: Path, rundir: Path,
           python: str = sys.executable) -> str:
    """The supervisord configuration (INI text) for `programs` [(name, command)]."""
    listener = Path(__file__).resolve().parent / "prefix.py"
    width = max(len(name) for name, _ in programs)
    out = [
        "; Rendered by stack/supervisor/render.py from the Procfile; do not edit.",
        "[supervisord]",
        "nodaemon=true",
        # As root, say so (supervisord otherwise warns that it did not drop privileges).
        *(["user=root"] if os.geteuid() == 0 else []),
        # In the foreground supervisord also writes its own lines (spawned, exited with its
        # status, gave up) to the terminal; the file keeps them after the terminal is gone.
        f"logfile={_ini(str(rundir / 'supervisord.log'))}",
        f"pidfile={_ini(str(rundir / 'supervisord.pid'))}",
        f"directory={_ini(str(workdir))}",
        "",
        "[unix_http_server]",
        f"file={_ini(str(rundir / 'supervisor.sock'))}",
        "chmod=0700",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_ini(str(rundir / 'supervisor.sock'))}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[eventlistener:prefix]",
        f"command={_ini(shlex.join([python, str(listener), str(width)]))}",
        "events=PROCESS_LOG",
        # Output comes in bursts (a consumer's catch-up): queue them rather than drop any.
        "buffer_size=10000",
        "stderr_logfile=/dev/stdout",
        "stderr_logfile_maxbytes=0",
        "environment=PYTHONIOENCODING=\"utf-8\"",
        "",
    ]
    for name, command in programs:
        out += [
            f"[program:{name}]",
            f"command={_ini(os.path.expandvars(command))}",
            f"directory={_ini(str(workdir))}",
            "autostart=true",
            "autorestart=true",
            f"startsecs={STARTSECS}",
            f"startretries={STARTRETRIES}",
            f"stopwaitsecs={STOPWAITSECS}",
            "stopasgroup=true",
            "killasgroup=true",
            # Output goes to the listener only (no log files to rotate).
            "stdout_logfile=NONE",
            "stderr_logfile=NONE",
            "stdout_events_enabled=true",
            "stderr_events_enabled=true",
            "",
        ]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    procfile, workdir, rundir = Path(argv[1]), Path(argv[2]), Path(argv[3])
    try:
        programs = procfile_parse(procfile.read_text())
    except (OSError, ValueError) as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 1
    if not programs:
        print(f"render.py: {procfile} names no program", file=sys.stderr)
        return 1
    sys.stdout.write(render(programs, workdir=workdir.resolve(), rundir=rundir.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
