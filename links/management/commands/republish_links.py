"""`manage.py republish_links`: send links to the links topic again.

Without options: every link (re-sending is harmless: a record is a full upsert by tinyurl).
--pending: only links that Kafka has not acknowledged yet (the outbox relay).
--follow: keep doing that every --interval seconds until SIGTERM; run it as a service.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import timedelta

from django.core.management.base import BaseCommand
from django.db import DatabaseError, close_old_connections
from kafka.errors import KafkaError

from links import selectors, services
from shortener_project import bus, metrics

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Re-send links to the links topic (all, or only the unacknowledged ones)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--pending", action="store_true", help="only unacknowledged links")
        parser.add_argument("--follow", action="store_true", help="repeat until stopped")
        parser.add_argument("--interval", type=float, default=2.0, help="seconds between rounds")
        parser.add_argument("--metrics-port", type=int, default=0,
                            help="with --follow: serve Prometheus metrics on this port")

    def handle(self, *args, pending: bool, follow: bool, interval: float, metrics_port: int,
               **options) -> None:
        if follow:
            metrics.serve(metrics_port)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
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
