"""Waiting on conditions, never on time; ports to listen on and to check."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# How much longer than its `timeout` a wait_until waits before it fails. A wait's timeout is
# when to give up, never a claim about the product (a test that claims a bound measures it and
# asserts it on its own); on success the wait ends as soon as the condition holds, so a longer
# limit costs nothing. The suite runs whole on shared machines (2 cores, other runs at the same
# time), where starting a Django process or a Kafka consumer group took over 20 s.
WAIT_SCALE = float(os.environ.get("SHORTENER_TEST_WAIT_SCALE", "3"))


def wait_until(
    condition: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `condition` every `interval` seconds until it returns something truthy, and return
    that; fail (AssertionError naming `what` and the last exception the condition raised) after
    `timeout` x WAIT_SCALE seconds."""
    timeout *= WAIT_SCALE
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - conditions may fail while things start
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or condition}"
        + (f" (last error: {last_exc!r})" if last_exc else "")
    )


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
