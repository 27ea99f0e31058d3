"""`manage.py consume_links`: keep this replica's Redis in step with the links topic.

Runs until SIGTERM or SIGINT, which finish the batch in hand and exit cleanly.
See redirects/consumer.py for how the position is kept.
"""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand

from shortener_project import metrics

from redirects.consumer import LinksConsumer
from redirects.selectors import redis_get


class Command(BaseCommand):
    help = "Read the links topic into this replica's Redis (whole topic first, then follow)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--metrics-port", type=int, default=9101,
            help="serve Prometheus metrics on this port (0: don't); see docs/metrics.md")

    def handle(self, *args, metrics_port: int, **options) -> None:
        metrics.serve(metrics_port)
        stop = threading.Event()
        # The handler only sets the flag: the loop notices within one poll (<= 0.5 s) and
        # stops between batches, never inside one.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        LinksConsumer(redis=redis_get(), stop=stop).run()
