"""`manage.py republish_links`: send links to the links topic again.

Without options: every link (re-sending is harmless: a record is a full upsert by tinyurl).
--pending: only links that Kafka has not acknowledged yet (the outbox relay).
--follow: keep doing that every --interval seconds until SIGTERM; run it as a service.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from django.db import DatabaseError, close_old_connections
from kafka.errors import KafkaError

from links import selectors, services
from shortener_project import bus
from shortener_project.commands import LongRunningCommand

logger = logging.getLogger(__name__)


class Command(LongRunningCommand):
    help = "Re-send links to the links topic (all, or only the unacknowledged ones)."

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)  # --metrics-port (off by default; useful with --follow)
        parser.add_argument("--pending", action="store_true", help="only unacknowledged links")
        parser.add_argument("--follow", action="store_true", help="repeat until stopped")
        parser.add_argument("--interval", type=float, default=2.0, help="seconds between rounds")

    def run(self, stop: threading.Event, *, pending: bool, follow: bool, interval: float,
            **options) -> None:
        try:
            while True:
                try:
                    if pending:
                        # Links younger than the publish timeout are still being waited for
                        # by their own /create; leave them to it.
                        sent, failed = services.links_publish_pending(min_age=timedelta(seconds=10))
                    else:
                        sent, failed = services.links_publish(links=selectors.links_all())
                    if sent or failed or not follow:
                        logger.info("republish: %d sent, %d failed", sent, failed)
                        if not follow:
                            self.stdout.write(f"{sent} sent, {failed} failed")
                except (KafkaError, DatabaseError) as exc:
                    logger.warning("republish round failed: %r", exc)
                    bus.producer_reset()
                    close_old_connections()
                    if not follow:
                        raise
                if not follow or stop.wait(interval):
                    break
        finally:
            bus.producer_reset()  # flushes what is still buffered
