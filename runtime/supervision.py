"""Background threads that a process exists for, supervised: none dies silently.

A thread that ends by an exception (or returns while the process is not stopping) is logged as
CRITICAL with its traceback, counted in shortener_thread_deaths_total{thread} and shown as 0 in
shortener_thread_alive{thread}. Then, by the thread's policy:
  * restart=False: the process stops (the shared stop flag is set) and its command exits
    non-zero, so that the service manager starts it again (the systemd units in deploy/ have
    Restart=on-failure). For a thread whose death leaves the process useless: the outbox's
    links audit.
  * restart=True: the thread is started again after a back-off (1 s doubling to 60 s, back to
    1 s once a run lasted longer than the cap). For a thread beside the process's main work,
    whose restart must not interrupt it: report_clicks' status publisher.

Python's threading.excepthook would only log a death; the process would carry on without the
thread, which is what this module exists to prevent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from runtime.metrics import THREAD_ALIVE, THREAD_DEATHS

logger = logging.getLogger(__name__)


class SupervisedThread:
    """Run `target()` in a thread named `name` until `stop` is set; see the module's docstring.

    target: called once per (re)start; it should return only once `stop` is set. failed: why
    the thread died, once it did under restart=False (None otherwise): the command raises
    then, to exit non-zero.
    """

    def __init__(
        self,
        *,
        name: str,
        target: Callable[[], None],
        stop: threading.Event,
        restart: bool,
        daemon: bool = False,
        backoff_initial_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
    ) -> None:
        self.name = name
        self.target = target
        self.stop = stop
        self.restart = restart
        self.backoff_initial_seconds = backoff_initial_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.failed: str | None = None
        self.deaths = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=daemon)

    def start(self) -> SupervisedThread:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        backoff = self.backoff_initial_seconds
        while True:
            THREAD_ALIVE.labels(self.name).set(1)
            started = time.monotonic()
            try:
                self.target()
            except Exception as exc:  # noqa: BLE001 - the point: no death goes unseen
                reason = repr(exc)
                logger.critical("thread %s died: %s", self.name, reason, exc_info=True)
            else:
                if self.stop.is_set():
                    THREAD_ALIVE.labels(self.name).set(0)
                    return
                reason = "it returned while the process was not stopping"
                logger.critical("thread %s ended: %s", self.name, reason)
            THREAD_ALIVE.labels(self.name).set(0)
            THREAD_DEATHS.labels(self.name).inc()
            self.deaths += 1
            if not self.restart:
                self.failed = reason
                logger.critical("thread %s is gone: stopping the process, which exits non-zero "
                                "so that its service manager starts it again", self.name)
                self.stop.set()
                return
            if time.monotonic() - started > self.backoff_max_seconds:
                backoff = self.backoff_initial_seconds  # it had worked for a while
            logger.critical("thread %s: starting it again in %.0f s", self.name, backoff)
            if self.stop.wait(backoff):
                return
            backoff = min(backoff * 2, self.backoff_max_seconds)
