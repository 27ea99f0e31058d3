"""consume_clicks as a process: a fault of the records' content is rejected, never retried
forever; a fault of the store (PostgreSQL refusing connections) is retried with a growing
back-off and skips nothing (topics/loop.py)."""

from __future__ import annotations

import re

import psycopg2
from django.db import connection

from links.models import ConsumerPosition, Link
from testkit import sample, scrape, wait_until
from tests.conftest import clicks_topic_end
from tests.links.test_clicks import NOW, new_link
from topics.clicks import click_report_encode, clicks_topic
from topics.links import producer_get
from topics.records import INT_MAX

LARGEST = INT_MAX  # the largest count a report may carry (messages.ClickReport)
# Counters of one link at LARGEST whose sum still fits PostgreSQL's bigint (Link.clicks):
# 1024 * (2**53 - 1) = 2**63 - 1024; one more is beyond it.
FITTING = (2**63 - 1) // LARGEST


def send(reports: list[tuple[str, str, int]]) -> list[int]:
    """(tinyurl, incarnation, count) reports to the clicks topic; their offsets."""
    producer = producer_get()
    futures = []
    for tinyurl, incarnation, count in reports:
        key, value = click_report_encode(tinyurl=tinyurl, node="n1", incarnation=incarnation,
                                         count=count, reported_at=NOW)
        futures.append(producer.send(clicks_topic(), key=key, value=value))
    producer.flush()
    return [future.get(timeout=10).offset for future in futures]


def position() -> int:
    row = ConsumerPosition.objects.filter(topic=clicks_topic()).first()
    return row.next_offset if row else 0


def test_totals_that_overflow_are_rejected_and_later_clicks_are_counted(clicks_consumer):
    """FITTING + 1 counters of one link at the largest count: each report is valid, their sum
    is beyond PostgreSQL's bigint (Link.clicks). The last is rejected with its offset and
    reason; the consumer goes on counting."""
    big, later = new_link("https://example.com/overflow"), new_link("https://example.com/later")
    wait_until(lambda: position() == clicks_topic_end(), timeout=30, what="earlier reports")
    offsets = send([(big.tinyurl, f"i{n}", LARGEST) for n in range(FITTING + 1)]
                   + [(later.tinyurl, "i1", 5)])
    overflowing = offsets[FITTING]
    wait_until(lambda: Link.objects.get(pk=later.pk).clicks == 5, timeout=30,
               what="the report after the overflowing one")
    send([(later.tinyurl, "i1", 9)])
    wait_until(lambda: Link.objects.get(pk=later.pk).clicks == 9, timeout=30,
               what="a later report")
    assert Link.objects.get(pk=big.pk).clicks == FITTING * LARGEST
    assert clicks_consumer.alive()
    output = clicks_consumer.output()
    assert (f"rejected record topic={clicks_topic()} partition=0 offset={overflowing}: the "
            "store refused its content") in output
    assert "out of range" in output  # PostgreSQL's own words for the reason
    assert output.count(f"partition=0 offset={overflowing}:") == 1  # logged once
    samples = scrape(f"http://127.0.0.1:{clicks_consumer.metrics_port}/metrics")
    assert sample(samples, "shortener_records_rejected_total", topic=clicks_topic(),
                  reason="numeric_value_out_of_range") == 1
    # Not a store failure: no retry.
    assert sample(samples, "shortener_consumer_retries_total", topic=clicks_topic(),
                  reason="store") == 0


def _connections_allowed(allowed: bool) -> None:
    """Let the test database accept new sessions or not (this test's own session stays), and
    end consume_clicks' working sessions when not: not the one holding its job's advisory lock
    (runtime/leadership.py), whose end would make it stop and exit, as a lost lead must
    (tests/links/test_leadership.py). What is tested here is the loop's back-off while its
    store is away. PostgreSQL refuses to change this for the database a session is in, so it is
    done from the maintenance database."""
    db = connection.settings_dict
    admin = psycopg2.connect(dbname="postgres", user=db["USER"], password=db["PASSWORD"] or None,
                             host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'ALTER DATABASE "{db["NAME"]}" WITH ALLOW_CONNECTIONS '
                           f'{str(allowed).lower()}')
            if not allowed:
                cursor.execute("SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a "
                               "WHERE a.application_name = 'test_consume_clicks' "
                               "AND a.datname = %s AND NOT EXISTS (SELECT 1 FROM pg_locks l "
                               "WHERE l.pid = a.pid AND l.locktype = 'advisory')",
                               [db["NAME"]])
    finally:
        admin.close()


def test_postgresql_refusing_connections_backs_off_to_the_cap_and_skips_nothing(
    clicks_consumer,
):
    link = new_link("https://example.com/backoff")
    wait_until(lambda: position() == clicks_topic_end(), timeout=30, what="earlier reports")
    metrics = f"http://127.0.0.1:{clicks_consumer.metrics_port}/metrics"
    try:
        _connections_allowed(False)
        # Reports arrive while PostgreSQL refuses consume_clicks (its sessions were ended and
        # new ones are refused: "database ... is not currently accepting connections").
        send([(link.tinyurl, f"i{n}", 10 + n) for n in range(20)])
        waits = lambda: [float(w) for w in re.findall(  # noqa: E731
            r"store unavailable: .*; retrying in ([0-9.]+)s", clicks_consumer.output())]
        wait_until(lambda: waits().count(10.0) >= 2, timeout=60,
                   what="two retries at the back-off's cap")
        assert waits()[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
        assert max(waits()) == 10.0
        assert sample(scrape(metrics), "shortener_consumer_backoff_seconds",
                      topic=clicks_topic()) == 10.0
        assert Link.objects.get(pk=link.pk).clicks == 0
    finally:
        _connections_allowed(True)
    # Every report is applied once PostgreSQL is back: nothing was skipped.
    wait_until(lambda: Link.objects.get(pk=link.pk).clicks == sum(10 + n for n in range(20)),
               timeout=30, what="the reports after PostgreSQL is back")
    wait_until(lambda: sample(scrape(metrics), "shortener_consumer_backoff_seconds",
                              topic=clicks_topic()) == 0, timeout=10,
               what="the back-off reset by a commit")
    row = ConsumerPosition.objects.get(topic=clicks_topic())
    assert row.next_offset == clicks_topic_end()
    assert clicks_consumer.alive()
