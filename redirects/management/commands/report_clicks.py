"""`manage.py report_clicks`: report this replica's click counters to the master.

Runs until SIGTERM or SIGINT; then it reports every click counted so far and exits.
See redirects/clicks.py.
"""

from __future__ import annotations

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from redirects.clicks import ClickReporter
from redirects.selectors import redis_get


class Command(BaseCommand):
    help = "Send click reports (every hundred, and every SHORTENER_CLICKS_FLUSH_SECONDS)."

    def handle(self, *args, **options) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        ClickReporter(
            redis=redis_get(),
            stop=stop,
            node=settings.SHORTENER_NODE_ID,
            flush_seconds=settings.SHORTENER_CLICKS_FLUSH_SECONDS,
        ).run()
