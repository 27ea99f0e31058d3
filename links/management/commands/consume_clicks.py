"""`manage.py consume_clicks`: fold the replicas' click reports into PostgreSQL (master).

Runs until SIGTERM or SIGINT, which finish the batch in hand and exit cleanly.
See links/clicks.py for how the totals stay exact.
"""

from __future__ import annotations

import threading

from links.clicks import ClicksConsumer
from runtime.commands import LongRunningCommand


class Command(LongRunningCommand):
    help = "Read the clicks topic into the master's totals (PostgreSQL)."
    default_metrics_port = 9103

    def run(self, stop: threading.Event, **options) -> None:
        ClicksConsumer(stop=stop).run()
