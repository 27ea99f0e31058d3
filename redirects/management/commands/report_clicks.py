"""`manage.py report_clicks`: report this replica's click counters to the master.

Runs until SIGTERM or SIGINT; then it reports every click counted so far and exits.
See redirects/clicks.py.
"""

from __future__ import annotations

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from shortener_project import metrics

from redirects.clicks import ClickReporter
from redirects.selectors import redis_get


class Command(BaseCommand):
    help = "Send click reports (every hundred, and every SHORTENER_CLICKS_FLUSH_SECONDS)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--metrics-port", type=int, default=9102,
            help="serve Prometheus metrics on this port (0: don't); see docs/metrics.md")

    def handle(self, *args, metrics_port: int, **options) -> None:
        metrics.serve(metrics_port)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        ClickReporter(
            redis=redis_get(),
            stop=stop,
            node=settings.SHORTENER_NODE_ID,
            flush_seconds=settings.SHORTENER_CLICKS_FLUSH_SECONDS,
        ).run()
