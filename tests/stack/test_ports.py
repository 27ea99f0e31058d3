"""One source for every address: the ports the embedded stack is told to use (SHORTENER_PG_PORT,
SHORTENER_KAFKA_PORT, SHORTENER_KAFKA_CONTROLLER_PORT, SHORTENER_REDIS_PORTS; stack/lib.sh) are
the ports the settings' default addresses name, and a port something else holds stops
`stack/services.sh start` at once, naming the variable that moves it.

The taken-port runs use a data folder of their own (nothing of it runs, so every port is checked)
and free ports for the rest: the check comes before any service starts, so none is started."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from testkit import ROOT, free_port

PORT_VARIABLES = ["SHORTENER_PG_PORT", "SHORTENER_KAFKA_PORT",
                  "SHORTENER_KAFKA_CONTROLLER_PORT", "SHORTENER_REDIS_PORTS"]
ADDRESSES = ["KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL"]


def stack_env(data, **ports: str) -> dict[str, str]:
    # On the loopback address, where the holder below listens.
    env = {k: v for k, v in os.environ.items()
           if k not in PORT_VARIABLES and k != "SHORTENER_KAFKA_HOST"}
    env["SHORTENER_DATA"] = str(data)
    for name in PORT_VARIABLES:
        env[name] = ports.get(name) or str(free_port())
    return env


@pytest.mark.parametrize("variable", PORT_VARIABLES)
def test_a_taken_port_stops_the_start_at_once_naming_its_variable(tmp_path, variable):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(["bash", "stack/services.sh", "start"], cwd=ROOT,
                                env=stack_env(tmp_path / "data", **{variable: str(port)}),
                                capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert (f"port {port} is taken (by another process): set {variable} to a free port"
            in result.stderr), result.stderr
    assert elapsed < 10, elapsed
    # Nothing was started (nor its data folder made) before the check failed.
    assert not (tmp_path / "data").exists()


def test_one_port_given_to_two_services_is_refused(tmp_path):
    port = str(free_port())
    result = subprocess.run(["bash", "stack/services.sh", "check"], cwd=ROOT,
                            env=stack_env(tmp_path, SHORTENER_KAFKA_PORT=port,
                                          SHORTENER_KAFKA_CONTROLLER_PORT=port),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"port {port} is given twice" in result.stderr, result.stderr


@pytest.mark.services
def test_our_own_running_services_are_already_running_not_taken():
    """The services this run uses, started again: each is reported running, nothing fails."""
    env = {**os.environ}
    assert subprocess.run(["bash", "stack/services.sh", "status"], cwd=ROOT, env=env,
                          capture_output=True, timeout=60).returncode == 0, \
        "the services lane runs with the services up"
    result = subprocess.run(["bash", "stack/services.sh", "start"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "taken" not in result.stderr
    redis_ports = os.environ.get("SHORTENER_REDIS_PORTS", "26379 26380").split()
    assert result.stderr.count("already running") == 2 + len(redis_ports), result.stderr


def settings_addresses(**env: str) -> dict:
    """The addresses a process started with `env` (over this one's, less every address and
    port variable) builds its clients from."""
    base = {k: v for k, v in os.environ.items() if k not in PORT_VARIABLES + ADDRESSES}
    code = ("import json; from django.conf import settings; print(json.dumps({"
            "'kafka': settings.KAFKA_BOOTSTRAP_SERVERS, 'redis': settings.REDIS_URL, "
            "'cache': settings.CACHES['default']['LOCATION'], "
            "'pg': [settings.DATABASES['default'][k] for k in ('HOST', 'PORT', 'NAME')]}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60,
                         capture_output=True, text=True,
                         env={**base, "DJANGO_SETTINGS_MODULE": "shortener_project.settings",
                              "SHORTENER_ROLE": "master", "SHORTENER_USER": "portcheck",
                              "DJANGO_SECRET_KEY": "x", **env}).stdout
    return json.loads(out)


def test_the_default_addresses_follow_the_stacks_ports():
    got = settings_addresses(SHORTENER_KAFKA_PORT="19392", SHORTENER_PG_PORT="15532",
                             SHORTENER_REDIS_PORTS="26479 26480")
    assert got == {"kafka": ["127.0.0.1:19392"], "redis": "redis://127.0.0.1:26479/0",
                   "cache": "redis://127.0.0.1:26479/0",
                   "pg": ["127.0.0.1", 15532, "portcheck"]}
    # Without them, the assignment's ports.
    assert settings_addresses() == {"kafka": ["127.0.0.1:9092"],
                                    "redis": "redis://127.0.0.1:26379/0",
                                    "cache": "redis://127.0.0.1:26379/0",
                                    "pg": ["127.0.0.1", 5432, "portcheck"]}


def test_explicit_addresses_win_over_the_stacks_ports():
    got = settings_addresses(SHORTENER_KAFKA_PORT="19392", SHORTENER_PG_PORT="15532",
                             SHORTENER_REDIS_PORTS="26479",
                             KAFKA_BOOTSTRAP_SERVERS="kafka.example:9000",
                             DATABASE_URL="postgres://u@db.example:6000/other",
                             REDIS_URL="redis://redis.example:7000/1")
    assert got == {"kafka": ["kafka.example:9000"], "redis": "redis://redis.example:7000/1",
                   "cache": "redis://redis.example:7000/1",
                   "pg": ["db.example", 6000, "other"]}


@pytest.mark.services
@pytest.mark.parametrize("variable,service", [("SHORTENER_PG_PORT", "PostgreSQL"),
                                              ("SHORTENER_KAFKA_PORT", "Kafka")])
def test_a_running_service_on_other_ports_is_not_already_running(variable, service):
    """The services this run uses, asked for on another port: their data folder's server runs,
    but not there. The check fails at once, naming the variable, instead of answering "already
    running" for a port nothing listens on (every client of that run would then fail later)."""
    port = str(free_port())
    started = time.monotonic()
    result = subprocess.run(["bash", "stack/services.sh", "check"], cwd=ROOT,
                            env={**os.environ, variable: port},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"{service} of " in result.stderr and f"runs, but not on port {port}" in \
        result.stderr and variable in result.stderr, result.stderr
    assert time.monotonic() - started < 10


@pytest.mark.services
def test_a_run_stops_only_the_services_it_started(tmp_path):
    """`services.sh stopped` names the services that do not run (what `make up` / `make test`
    start, and stop again at their end); `stop NAME` stops those alone. Two Redis of a data
    folder of the test's own: the one running before is left running."""
    before, mine = free_port(), free_port()
    env = stack_env(tmp_path, SHORTENER_REDIS_PORTS=f"{before} {mine}")
    run = lambda *args: subprocess.run(["bash", *args], cwd=ROOT, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=60)
    assert run("stack/redis.sh", "start", str(before)).returncode == 0
    try:
        stopped = run("stack/services.sh", "stopped").stdout.split()
        assert stopped == ["postgres", "kafka", f"redis:{mine}"]
        assert run("stack/redis.sh", "start", str(mine)).returncode == 0
        result = run("stack/services.sh", "stop", *[s for s in stopped if s.startswith("redis:")])
        assert result.returncode == 0, result.stderr
        assert run("stack/redis.sh", "status", str(mine)).returncode != 0
        assert run("stack/redis.sh", "status", str(before)).returncode == 0
    finally:
        run("stack/redis.sh", "stop", str(mine))
        run("stack/redis.sh", "stop", str(before))
