"""`manage.py republish_links`: send links' current states to the links topic again.

Without options: every link's current state (schema 2, with its version). Re-sending is harmless
(a replica ignores a version it already holds); it is also the upgrade path from schema-1
records, and what heals a links topic whose broker lost acknowledged records.
--pending: only links that Kafka has not acknowledged yet (the outbox relay).
--follow: keep doing that every --interval seconds until SIGTERM; run it as a service. With
--pending it also audits the links topic (links/audit.py): a link whose newest record there is
not its current state is sent again. The audit runs in a supervised thread: if it dies, the
command stops and exits non-zero (CommandError), so that systemd starts the relay again.
With --pending --follow, one instance across master hosts works and the others wait for its lock
(runtime/leadership.py); a one-off run works whatever else runs (re-sending is harmless).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from django.core.management.base import CommandError
from django.db import DatabaseError, close_old_connections, connection
from kafka.errors import KafkaError

from links import publishing, selectors
from links.audit import links_audit_loop_make
from runtime.commands import LongRunningCommand
from runtime.supervision import SupervisedThread
from topics.links import producer_reset, publish_wait_seconds

logger = logging.getLogger(__name__)


class Command(LongRunningCommand):
    help = "Re-send links to the links topic (all, or only the unacknowledged ones)."

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)  # --metrics-port (off by default; useful with --follow)
        parser.add_argument("--pending", action="store_true", help="only unacknowledged links")
        parser.add_argument("--follow", action="store_true",
                            help="repeat until stopped (with --pending: also audit the topic)")
        parser.add_argument("--interval", type=float, default=2.0, help="seconds between rounds")

    def leader_job(self, *, pending: bool, follow: bool, **options) -> str | None:
        return "outbox-relay" if pending and follow else None

    def run(self, stop: threading.Event, *, pending: bool, follow: bool, interval: float,
            **options) -> None:
        auditor = None
        if pending and follow:
            # Without the audit, the relay would carry on but never again re-send a link whose
            # newest record in the topic is out of date: its death ends the process.
            auditor = SupervisedThread(name="links-audit", target=lambda: self._audit(stop),
                                       stop=stop, restart=False).start()
        # Links whose own /create (or takedown) may still be waiting for its ack are left to it:
        # the delivery (and a fresh producer's connect) each take up to the publish timeout.
        min_age = timedelta(seconds=2 * publish_wait_seconds())
        try:
            while True:
                try:
                    if pending:
                        sent, failed = publishing.links_publish_pending(min_age=min_age)
                    else:
                        sent, failed = publishing.links_publish(links=selectors.links_all())
                    if sent or failed or not follow:
                        logger.info("republish: %d sent, %d failed", sent, failed)
                        if not follow:
                            self.stdout.write(f"{sent} sent, {failed} failed")
                except (KafkaError, DatabaseError) as exc:
                    logger.warning("republish round failed: %r", exc)
                    close_old_connections()
                    if not follow:
                        raise
                if not follow or stop.wait(interval):
                    break
        finally:
            stop.set()
            if auditor is not None:
                auditor.join()
            producer_reset()  # flushes what is still buffered
        if auditor is not None and auditor.failed:
            raise CommandError(f"the links audit thread died ({auditor.failed}); exiting so "
                               f"that the service manager starts the outbox relay again")

    @staticmethod
    def _audit(stop: threading.Event) -> None:
        try:
            links_audit_loop_make(stop=stop).run()
        finally:
            connection.close()  # this thread's own database connection
