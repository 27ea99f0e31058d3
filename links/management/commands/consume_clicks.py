"""`manage.py consume_clicks`: fold the replicas' click reports into PostgreSQL (master).

Runs until SIGTERM or SIGINT, which finish the batch in hand and exit cleanly.
See links/clicks.py for how the totals stay exact.
"""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand

from shortener_project import metrics

from links.clicks import ClicksConsumer


class Command(BaseCommand):
    help = "Read the clicks topic into the master's totals (PostgreSQL)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--metrics-port", type=int, default=9103,
            help="serve Prometheus metrics on this port (0: don't); see docs/metrics.md")

    def handle(self, *args, metrics_port: int, **options) -> None:
        metrics.serve(metrics_port)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        ClicksConsumer(stop=stop).run()
