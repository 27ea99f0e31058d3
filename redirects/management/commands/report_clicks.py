"""`manage.py report_clicks`: report this replica's click counters, and its status, to the master.

Runs until SIGTERM or SIGINT; then it reports every click counted so far and exits, within 10 s
whatever Kafka does (what Kafka did not acknowledge by then stays in Redis for the next run).
See redirects/reporter.py (the counters it reports: redirects/counting.py), and
redirects/status.py for the status (every SHORTENER_STATUS_SECONDS).
"""

from __future__ import annotations

import threading

from django.conf import settings

from redirects.reporter import ClickReporter
from redirects.selectors import redis_get
from redirects.status import status_thread_start
from runtime.commands import LongRunningCommand


class Command(LongRunningCommand):
    help = "Send click reports (every hundred, and every SHORTENER_CLICKS_FLUSH_SECONDS)."
    default_metrics_port = 9102

    def run(self, stop: threading.Event, **options) -> None:
        status = status_thread_start(redis=redis_get(), stop=stop)
        ClickReporter(
            redis=redis_get(),
            stop=stop,
            node=settings.SHORTENER_NODE_ID,
            flush_seconds=settings.SHORTENER_CLICKS_FLUSH_SECONDS,
            sweep_seconds=settings.SHORTENER_CLICKS_SWEEP_SECONDS,
        ).run()
        # The status thread is a daemon: its last status gets a second, no more, so that SIGTERM
        # stops the process within 10 s even while it waits on Kafka (ClickReporter).
        status.join(timeout=1)
