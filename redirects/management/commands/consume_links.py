"""`manage.py consume_links`: keep this replica's Redis in step with the links topic.

Runs until SIGTERM or SIGINT, which finish the batch in hand and exit cleanly (the loop
notices the flag within one poll, <= 0.5 s, and never stops inside a batch).
See redirects/consumer.py for how the position is kept.
"""

from __future__ import annotations

import gc
import threading

from redirects.consumer import LinksConsumer
from redirects.selectors import redis_get
from runtime.commands import LongRunningCommand


class Command(LongRunningCommand):
    help = "Read the links topic into this replica's Redis (whole topic first, then follow)."
    default_metrics_port = 9101

    def run(self, stop: threading.Event, **options) -> None:
        # What start-up made (Django, its apps, the clients' modules) lives as long as the
        # process. Frozen out of the collector's generations, it is no longer walked by every
        # full collection, which a catch-up's millions of short-lived objects (kafka-python's
        # records, the decoded ones) keep triggering: a sixth of the command's CPU in loading
        # 1,000,000 links (7.8 -> 6.6 s; bench/catchup.py, docs/performance.md).
        gc.freeze()
        LinksConsumer(redis=redis_get(), stop=stop).run()
