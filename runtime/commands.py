"""The shape every long-running command shares (consume_links, report_clicks, consume_clicks).

SIGTERM and SIGINT only set a stop flag: the command's loop notices it between batches and
exits cleanly (systemd's stop, Ctrl-C). Metrics are served on --metrics-port.
"""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand

from runtime import metrics


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
        self.run(stop, **options)

    def run(self, stop: threading.Event, **options) -> None:
        raise NotImplementedError
