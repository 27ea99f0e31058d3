"""The shape every long-running command shares (consume_links, report_clicks, consume_clicks).

SIGTERM and SIGINT only set a stop flag: the command's loop notices it between batches and
exits cleanly (systemd's stop, Ctrl-C). Metrics are served on --metrics-port. A master job that
must run once across master hosts (leader_job) first waits as a standby until it holds the
job's lock (runtime/leadership.py), and exits non-zero if it loses it.
"""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from runtime import metrics
from runtime.leadership import Leadership


class LongRunningCommand(BaseCommand):
    default_metrics_port = 0

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--metrics-port", type=int, default=self.default_metrics_port,
            help="serve Prometheus metrics on this port (0: don't); see docs/metrics.md")

    def handle(self, *args, metrics_port: int, **options) -> None:
        metrics.serve(metrics_port)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        job = self.leader_job(**options)
        if job is None:
            self.run(stop, **options)
            return
        leadership = Leadership(job)
        if not leadership.acquire(stop):
            return  # stopped while a standby
        leadership.watch(stop)
        try:
            self.run(stop, **options)
        finally:
            stop.set()
            leadership.release()
        if leadership.lost:
            raise CommandError(f"lost the lead of {job} ({leadership.lost}); exiting so that the "
                               f"service manager starts it again, as a standby")

    def leader_job(self, **options) -> str | None:
        """The job's name if only one instance across master hosts may work (None: each
        works)."""
        return None

    def run(self, stop: threading.Event, **options) -> None:
        raise NotImplementedError
