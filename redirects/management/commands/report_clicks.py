"""`manage.py report_clicks`: report this replica's click counters to the master.

Runs until SIGTERM or SIGINT; then it reports every click counted so far and exits.
See redirects/clicks.py.
"""

from __future__ import annotations

import threading

from django.conf import settings

from redirects.clicks import ClickReporter
from redirects.selectors import redis_get
from shortener_project.commands import LongRunningCommand


class Command(LongRunningCommand):
    help = "Send click reports (every hundred, and every SHORTENER_CLICKS_FLUSH_SECONDS)."
    default_metrics_port = 9102

    def run(self, stop: threading.Event, **options) -> None:
        ClickReporter(
            redis=redis_get(),
            stop=stop,
            node=settings.SHORTENER_NODE_ID,
            flush_seconds=settings.SHORTENER_CLICKS_FLUSH_SECONDS,
        ).run()
