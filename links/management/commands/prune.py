"""`manage.py prune`: bounded growth on the master (links/pruning.py), once, then exit.

Run hourly by deploy/systemd's shortener-prune.timer. Rolls old hourly click buckets into daily
rows, drops daily rows past SHORTENER_CLICKS_DAYS_KEEP (if set), folds the counters of ended
incarnations (tombstoning their clicks-topic keys), and tombstones replicas gone for
SHORTENER_REPLICA_GONE_SECONDS. Prints one line of what it did; exits 1 if a step failed (the
other steps still ran; the next run retries). With several master hosts, each host's timer
runs it; one run at a time prunes (the others print that they skipped: runtime/leadership.py).
"""

from __future__ import annotations

import threading

import psycopg2
from django.core.management.base import BaseCommand, CommandError

from links import pruning
from runtime.leadership import Leadership
from topics.links import producer_reset


class Command(BaseCommand):
    help = "Roll up old click buckets, fold ended incarnations, forget gone replicas."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--catch-up-seconds", type=float, default=60.0,
            help="how long to wait for consume_clicks to apply what the clicks topic held when "
                 "the run began, before ending incarnations (default 60)")

    def handle(self, *args, catch_up_seconds: float, **options) -> None:
        leadership = Leadership("prune")
        try:
            taken = leadership.try_once()
        except psycopg2.Error as exc:
            raise CommandError(f"PostgreSQL unreachable: {str(exc).strip()}") from exc
        if not taken:
            self.stdout.write("skipped: another master host is pruning")
            return
        done = threading.Event()
        leadership.watch(done)
        try:
            report = pruning.prune(catch_up_seconds=catch_up_seconds,
                                   still_leading=lambda: leadership.lost is None)
        finally:
            done.set()
            producer_reset()  # send what is pending, close the connections
            leadership.release()
        self.stdout.write(
            f"buckets: {report.bucket_rows_rolled} hourly row(s) rolled into days, "
            f"{report.bucket_rows_dropped} dropped; {report.samples_dropped} position "
            f"sample(s) thinned; incarnations: "
            f"{len(report.incarnations_ended)} ended, {len(report.fold.incarnations)} folded "
            f"({report.fold.counters} counter(s), {report.fold.clicks} click(s), "
            f"{report.fold.tombstones} tombstone(s)); replicas gone: "
            f"{', '.join(report.replicas_gone) or 'none'}")
        if report.errors:
            raise CommandError("; ".join(report.errors))
