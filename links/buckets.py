"""The hourly series of a link's clicks (ClickBucket rows: link, node, hour): the hour a report's
clicks are charted in (report_hour, used by the fold in links/totals.py), and its bounded growth
(`manage.py prune`, links/pruning.py step 1): the hourly rows of every day that lies wholly before
the hourly chart's window are rolled into one row per (link, node, day), and rows older than
SHORTENER_CLICKS_DAYS_KEEP are dropped. Link.clicks never depends on buckets.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone as django_timezone

from links import selectors

logger = logging.getLogger(__name__)


def report_hour(reported_at: datetime, *, now: datetime) -> datetime:
    """The start (UTC) of the hour a report's clicks are charted in.

    reported_at: the report's time (the replica's clock; timezone-aware as the record type
    requires, UTC assumed if not). now: the master's clock, timezone-aware.

    A time after `now`, or one that has no UTC equivalent, counts as `now`. Clamped, not
    rejected: the time only places the clicks in the chart, while the count, which the record
    is for, is valid; a report rejected over its time would lose its clicks if it were its
    counter's last. A replica whose clock runs ahead must not fill hours that have not come yet,
    and a time such as 0001-01-01T00:00:00+01:00, valid RFC 3339, lies before the first UTC
    time Python's datetime (and so this code) can hold: converting it raises OverflowError.
    """
    if reported_at.tzinfo is None:
        reported_at = reported_at.replace(tzinfo=timezone.utc)
    try:
        when = reported_at.astimezone(timezone.utc)
    except OverflowError:
        when = now
    return min(when, now).astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


# Rows per statement of the bucket steps: bounds each transaction (and its locks) however much
# is due, e.g. after the prune has not run for weeks.
BUCKET_CHUNK = 10_000


def buckets_roll_up_before(*, now: datetime) -> datetime:
    """The first instant (a UTC midnight) whose hourly rows stay hourly: the day of the hourly
    chart's first slot (selectors.link_clicks_series: CHART_HOURS slots ending with the current
    hour). Every hour before it belongs to a day wholly outside that chart."""
    first_slot = selectors.hour_start(now) - (selectors.CHART_HOURS - 1) * selectors.HOUR
    return first_slot.replace(hour=0)


# One chunk: delete up to %(chunk)s hourly rows (not at 00:00) older than %(before)s, in hour
# order after the keyset (%(after_hour)s, %(after_id)s), and add each day's sum to its 00:00 row.
# Under READ COMMITTED a row that consume_clicks changed meanwhile is deleted in its newest
# version and RETURNING gives that version's clicks; a row it inserts after the statement began
# is not seen and waits for the next run; the upsert adds to the 00:00 row atomically (PostgreSQL
# 15 documentation: "Read Committed Isolation Level", and INSERT's "ON CONFLICT DO UPDATE
# guarantees an atomic INSERT or UPDATE outcome"). So no click is lost or counted twice.
# date_trunc with 'UTC' does not depend on the session's time zone.
_ROLL_UP_SQL = """
WITH picked AS (
    SELECT id, hour FROM links_clickbucket
    WHERE hour < %(before)s AND hour <> date_trunc('day', hour, 'UTC')
      AND (hour, id) > (%(after_hour)s, %(after_id)s)
    ORDER BY hour, id LIMIT %(chunk)s
),
gone AS (
    DELETE FROM links_clickbucket b USING picked p WHERE b.id = p.id
    RETURNING b.link_id, b.node, date_trunc('day', b.hour, 'UTC') AS day, b.clicks
),
days AS (
    INSERT INTO links_clickbucket (link_id, node, hour, clicks)
    SELECT link_id, node, day, SUM(clicks) FROM gone GROUP BY link_id, node, day
    ON CONFLICT (link_id, hour, node) DO UPDATE
        SET clicks = links_clickbucket.clicks + EXCLUDED.clicks
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM days),
       (SELECT hour FROM picked ORDER BY hour DESC, id DESC LIMIT 1),
       (SELECT id FROM picked ORDER BY hour DESC, id DESC LIMIT 1)
"""


def buckets_roll_up(*, now: datetime | None = None, chunk: int = BUCKET_CHUNK) -> int:
    """Sum the hourly ClickBucket rows of every day before buckets_roll_up_before(now) into one
    row per (link, node, day) at the day's 00:00 UTC; returns the hourly rows removed.

    One transaction per `chunk` rows. A day's sum per (link, node) is the same before and after,
    so link_clicks_series(unit="day") and link_clicks_daily_all do not change; the hourly series
    never reaches these days. Raises DatabaseError (what was committed stays; rerun)."""
    before = buckets_roll_up_before(now=now or django_timezone.now())
    after_hour, after_id = datetime(1, 1, 1, tzinfo=timezone.utc), 0
    removed = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_ROLL_UP_SQL, {"before": before, "after_hour": after_hour,
                                          "after_id": after_id, "chunk": chunk})
            gone, _, last_hour, last_id = cursor.fetchone()
        removed += gone
        if gone < chunk:
            break
        after_hour, after_id = last_hour, last_id
    if removed:
        logger.info("rolled %d hourly click bucket row(s) before %s into daily rows", removed,
                    before.isoformat())
    return removed


def buckets_drop_old(*, now: datetime | None = None, keep_days: int | None = None,
                     chunk: int = BUCKET_CHUNK) -> int:
    """Delete the ClickBucket rows of days more than `keep_days` (default
    SHORTENER_CLICKS_DAYS_KEEP) before today (UTC); 0 keeps every day. Returns the rows
    deleted. Link.clicks and the counters are not touched: only the CSV loses those days.
    Raises ValueError for a keep shorter than the daily chart (CHART_DAYS)."""
    keep_days = settings.SHORTENER_CLICKS_DAYS_KEEP if keep_days is None else keep_days
    if keep_days == 0:
        return 0
    if keep_days < selectors.CHART_DAYS:
        raise ValueError(f"keep_days={keep_days}: 0 or at least {selectors.CHART_DAYS}")
    today = selectors.hour_start(now or django_timezone.now()).replace(hour=0)
    cutoff = today - timedelta(days=keep_days - 1)
    dropped = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("DELETE FROM links_clickbucket WHERE id IN (SELECT id FROM "
                           "links_clickbucket WHERE hour < %s LIMIT %s)", [cutoff, chunk])
            n = cursor.rowcount
        dropped += n
        if n < chunk:
            break
    if dropped:
        logger.info("dropped %d click bucket row(s) before %s (SHORTENER_CLICKS_DAYS_KEEP=%d)",
                    dropped, cutoff.date().isoformat(), keep_days)
    return dropped
