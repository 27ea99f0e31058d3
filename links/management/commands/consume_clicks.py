"""`manage.py consume_clicks`: fold the replicas' click reports into PostgreSQL (master).

Runs until SIGTERM or SIGINT, which finish the batch in hand and exit cleanly. Beside it, a
thread follows the replicas' statuses (links/propagation_wait.py). On several master hosts, one
instance works and the others wait for its lock (runtime/leadership.py).
See links/totals.py for how the totals stay exact, links/clicks_consumer.py for the loop.
"""

from __future__ import annotations

import threading

from links.clicks_consumer import clicks_loop_make
from links.propagation_wait import follow_thread_start
from runtime.commands import LongRunningCommand


class Command(LongRunningCommand):
    help = "Read the clicks topic into the master's totals (PostgreSQL)."
    default_metrics_port = 9103

    def leader_job(self, **options) -> str | None:
        return "consume-clicks"

    def run(self, stop: threading.Event, **options) -> None:
        # The replicas' statuses, folded into the samples that time each link's propagation
        # (links/propagation.py): here, so they are folded whether or not anyone looks.
        follow_thread_start(stop=stop)
        clicks_loop_make(stop=stop).run()
