"""Bounded growth (links/pruning.py, manage.py prune), each pruning shown against the real
PostgreSQL and Kafka: old hourly buckets rolled into days with the charts and the CSV unchanged;
an ended incarnation folded, its clicks-topic keys tombstoned, and a replayed or retried report
of it not counted again; a gone replica tombstoned on the replicas topic and off the page."""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta, timezone

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from links import buckets, pruning, replicas, selectors, services
from links.models import (
    ClickBucket,
    ClickCounter,
    ConsumerPosition,
    EndedIncarnation,
    FoldedClicks,
    Link,
)
from links.totals import clicks_apply_batch
from testkit import FakeRecord as Rec
from testkit import wait_until
from tests.conftest import clicks_topic_end
from topics.clicks import click_report_encode, clicks_topic
from topics.links import producer_get
from topics.replicas import replica_status_encode, replicas_reader_make, replicas_topic

HOUR = timedelta(hours=1)
NOW = datetime.now(timezone.utc)


# --- 1. click buckets -------------------------------------------------------------------------


def link_views(admin_client, link: Link, now: datetime) -> tuple:
    """Everything the admin shows of a link's clicks over time: the hourly and the daily chart
    (as the link page computes them at `now`), the CSV, the last 24 hours."""
    hourly = selectors.link_clicks_series(link_id=link.pk, unit="hour",
                                          slots=selectors.CHART_HOURS, now=now)
    daily = selectors.link_clicks_series(link_id=link.pk, unit="day",
                                         slots=selectors.CHART_DAYS, now=now)
    csv = admin_client.get(f"/admin/links/link/{link.pk}/clicks.csv").content.decode()
    recent = (selectors.links_with_recent_clicks(
        Link.objects.filter(pk=link.pk), since=selectors.clicks_recent_since(now=now))
        .get().clicks_recent)
    return hourly, daily, csv, recent


def clicks_over_days(link: Link, days: int, seed: int) -> list[Rec]:
    """Reports of two replicas, each counting the link every few hours over `days` days up to
    NOW, stamped with the hour of their clicks (applied through consume_clicks' own apply)."""
    rng = random.Random(seed)
    records = []
    for node, incarnation in (("replica-a", "1700000000000001"), ("replica-b", "1700000000000002")):
        count = 0
        at = NOW - timedelta(days=days)
        while at < NOW:
            count += rng.choice([1, 3, 100])
            key, value = click_report_encode(tinyurl=link.tinyurl, node=node,
                                             incarnation=incarnation, count=count,
                                             reported_at=at)
            records.append(Rec(len(records), key, value))
            at += timedelta(minutes=rng.randint(20, 300))
    return records


def test_old_hours_roll_into_days_and_every_chart_and_the_csv_stay_the_same(
    transactional_db, admin_client
):
    link = services.link_create(longurl="https://example.com/prune/buckets").link
    records = clicks_over_days(link, days=120, seed=1)
    for i in range(0, len(records), 50):
        clicks_apply_batch(topic="prune-buckets", partition=0, records=records[i:i + 50],
                           expected_position=i or None)
    rows_before = ClickBucket.objects.count()
    before = link_views(admin_client, link, NOW)
    cutoff = buckets.buckets_roll_up_before(now=NOW)
    assert ClickBucket.objects.filter(hour__lt=cutoff).exclude(hour__hour=0).exists()

    rolled = buckets.buckets_roll_up(now=NOW, chunk=37)  # many chunks: the keyset walks on
    assert rolled > 0
    assert link_views(admin_client, link, NOW) == before
    # Every row before the cutoff is a day's (00:00 UTC); at most one per (node, day).
    old = ClickBucket.objects.filter(hour__lt=cutoff)
    assert all(h.hour == 0 and h.minute == 0 for h in old.values_list("hour", flat=True))
    assert old.count() == old.values("node", "hour").distinct().count()
    assert ClickBucket.objects.count() < rows_before
    # The hourly chart's window is untouched: hours there are still hours.
    assert ClickBucket.objects.filter(hour__gte=cutoff).exclude(hour__hour=0).exists()
    # Running again changes nothing.
    assert buckets.buckets_roll_up(now=NOW) == 0
    assert link_views(admin_client, link, NOW) == before

    # A report charted in an hour of a rolled day (a replica whose clock is behind) lands in
    # that day; the next roll-up folds it into the day's row, and the views agree all along.
    late_hour = cutoff - timedelta(days=3) + 5 * HOUR
    key, value = click_report_encode(tinyurl=link.tinyurl, node="replica-a",
                                     incarnation="1700000000000009", count=4,
                                     reported_at=late_hour)
    end = ConsumerPosition.objects.get(topic="prune-buckets").next_offset
    clicks_apply_batch(topic="prune-buckets", partition=0, records=[Rec(end, key, value)],
                       expected_position=end)
    with_late = link_views(admin_client, link, NOW)
    assert with_late[2] != before[2]  # the CSV shows the four clicks
    assert buckets.buckets_roll_up(now=NOW) == 1
    assert link_views(admin_client, link, NOW) == with_late


def test_daily_rows_are_dropped_only_past_a_configured_keep(transactional_db):
    link = services.link_create(longurl="https://example.com/prune/keep").link
    today = selectors.hour_start(NOW).replace(hour=0)
    for days_ago in (0, 89, 90, 200):
        ClickBucket.objects.create(link=link, node="n", hour=today - timedelta(days=days_ago),
                                   clicks=1)
    assert buckets.buckets_drop_old(now=NOW) == 0  # default: every day kept (the CSV)
    with pytest.raises(ValueError):
        buckets.buckets_drop_old(now=NOW, keep_days=30)  # shorter than the daily chart
    assert buckets.buckets_drop_old(now=NOW, keep_days=90) == 2
    assert sorted((today - h).days for h in ClickBucket.objects.values_list("hour", flat=True)) \
        == [0, 89]


# --- 2. counters of ended incarnations --------------------------------------------------------


def test_an_incarnation_named_by_any_status_or_recently_raised_does_not_end(transactional_db):
    """Two hosts sharing one Redis, or a renamed node whose old status is still in the topic,
    name the same incarnation: it is current while any status names it. An incarnation whose
    counter rose within the quiet time has not ended either (leftover reports may follow)."""
    link = services.link_create(longurl="https://example.com/prune/current").link
    records = [Rec(o, *click_report_encode(tinyurl=link.tinyurl, node=n, incarnation=i, count=3,
                                           reported_at=NOW))
               for o, (n, i) in enumerate([("a", "shared"), ("b", "shared"), ("a", "old"),
                                           ("c", "quiet")])]
    clicks_apply_batch(topic=clicks_topic(), partition=0, records=records,
                       expected_position=None)
    ClickCounter.objects.filter(incarnation__in=["shared", "quiet"]).update(
        updated_at=NOW - timedelta(days=30))
    ended = pruning.incarnations_end(current={"shared"}, now=NOW, quiet_seconds=3600)
    assert ended == ["quiet"]  # "old" rose just now; "shared" is named by a status
    assert pruning.incarnations_end(current={"shared"}, now=NOW + 2 * HOUR,
                                    quiet_seconds=3600) == ["old"]
    assert set(EndedIncarnation.objects.values_list("incarnation", flat=True)) == {"quiet", "old"}


def test_no_incarnation_ends_before_consume_clicks_applied_what_was_sent(transactional_db,
                                                                        settings):
    """Reports still unapplied in the clicks topic (consume_clicks down) hold every ending
    back: they would be refused once their incarnation ended."""
    link = services.link_create(longurl="https://example.com/prune/behind").link
    clicks_apply_batch(topic=clicks_topic(), partition=0, expected_position=None,
                       records=[Rec(0, *report(link.tinyurl, "n", "behind1", 2))])
    # Later reports of it, sent but not applied (no consume_clicks runs in this test).
    send([report(link.tinyurl, "n", "behind1", 3), report(link.tinyurl, "n", "behind1", 5)],
         clicks_topic())
    settings.SHORTENER_INCARNATION_QUIET_SECONDS = 60
    result = pruning.prune(now=NOW + HOUR, catch_up_seconds=0.5)
    assert result.incarnations_ended == [] and "consume_clicks is behind" in result.errors[-1]
    assert not EndedIncarnation.objects.exists()
    # Once applied (here: the position moved to the end by hand), it ends.
    ConsumerPosition.objects.filter(topic=clicks_topic()).update(
        next_offset=clicks_topic_end())
    assert pruning.prune(now=NOW + HOUR).incarnations_ended == ["behind1"]


def clicks_topic_records(keys: set[bytes]) -> list[tuple[int, bytes, bytes | None]]:
    """(offset, key, value) of every record of `keys` in the clicks topic, in offset order."""
    consumer = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
                             enable_auto_commit=False)
    tp = TopicPartition(clicks_topic(), 0)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end, found = consumer.end_offsets([tp])[tp], []
        while consumer.position(tp) < end:
            for recs in consumer.poll(timeout_ms=500).values():
                found += [(r.offset, r.key, r.value) for r in recs if r.key in keys]
        return found
    finally:
        consumer.close()


def send(records: list[tuple[bytes, bytes | None]], topic: str) -> None:
    producer = producer_get()
    futures = [producer.send(topic, key=k, value=v) for k, v in records]
    producer.flush()
    for future in futures:
        future.get(timeout=10)


def report(tinyurl: str, node: str, incarnation: str, count: int) -> tuple[bytes, bytes]:
    return click_report_encode(tinyurl=tinyurl, node=node, incarnation=incarnation, count=count,
                               reported_at=NOW)


def status(node: str, incarnation: str | None) -> tuple[bytes, bytes]:
    return replica_status_encode(node=node, links_position=0, links_end=0, ready=True,
                                 reason="", incarnation=incarnation, redirects=0, version="t",
                                 reported_at=NOW)


@pytest.mark.slow
def test_an_ended_incarnation_is_folded_tombstoned_and_never_counted_again(
    admin_client, clicks_consumer, settings, caplog
):
    one = services.link_create(longurl="https://example.com/prune/fold/1").link
    two = services.link_create(longurl="https://example.com/prune/fold/2").link
    # Node n1 counted in incarnation A, then its Redis restarted (B); n2 counts in C.
    tag = re.sub(r"\W", "", settings.SHORTENER_USER)[-8:]
    a, b, c = f"A{tag}", f"B{tag}", f"C{tag}"
    send([report(one.tinyurl, "n1", a, 5), report(two.tinyurl, "n1", a, 7),
          report(one.tinyurl, "n1", a, 4),  # an older copy, arriving late
          report(one.tinyurl, "n1", b, 3), report(one.tinyurl, "n2", c, 4)],
         clicks_topic())
    end = clicks_topic_end()

    def position() -> int:
        row = ConsumerPosition.objects.filter(topic=clicks_topic()).first()
        return row.next_offset if row else 0

    wait_until(lambda: position() == end, timeout=30, what="consume_clicks to reach the end")
    # (The topic is the session's: earlier tests may have left malformed records in it.)
    malformed = ConsumerPosition.objects.get(topic=clicks_topic()).skipped_malformed

    def shown() -> tuple:
        totals = dict(Link.objects.filter(pk__in=[one.pk, two.pk]).values_list("tinyurl", "clicks"))
        page = admin_client.get(f"/admin/links/link/{one.pk}/change/").content.decode()
        breakdown = re.search(r"n1: \d+, n2: \d+", page)
        return (totals, selectors.link_clicks_by_node(link_id=one.pk),
                selectors.link_clicks_by_node(link_id=two.pk),
                breakdown.group(0) if breakdown else None)

    before = shown()
    assert before == ({one.tinyurl: 12, two.tinyurl: 7}, {"n1": 8, "n2": 4}, {"n1": 7},
                      "n1: 8, n2: 4")
    send([status("n1", b), status("n2", c)], replicas_topic())

    # An hour later, with a quiet time of a minute: A is named by no status and quiet.
    settings.SHORTENER_INCARNATION_QUIET_SECONDS = 60
    result = pruning.prune(now=datetime.now(timezone.utc) + HOUR)
    assert result.errors == []
    assert result.incarnations_ended == [a]
    assert (result.fold.incarnations, result.fold.counters, result.fold.clicks,
            result.fold.tombstones) == ([a], 2, 12, 2)
    assert not ClickCounter.objects.filter(incarnation=a).exists()
    assert sorted(FoldedClicks.objects.values_list("link__tinyurl", "node", "clicks")) == sorted(
        [(one.tinyurl, "n1", 5), (two.tinyurl, "n1", 7)])
    assert shown() == before

    # Its keys end with a tombstone each (compaction then removes them).
    keys = {f"{a}:{one.tinyurl}".encode(), f"{a}:{two.tinyurl}".encode()}
    records = clicks_topic_records(keys)
    last = {k: v for _, k, v in records}
    assert last == {k: None for k in keys} and len(records) == 5

    # consume_clicks reads the tombstones (skipped, not malformed), then a reporter's retry of
    # A's last report and a late, higher one: refused, nothing counted twice.
    send([report(one.tinyurl, "n1", a, 5), report(one.tinyurl, "n1", a, 6)], clicks_topic())
    end = clicks_topic_end()
    wait_until(lambda: position() == end, timeout=30, what="the tombstones and the retries")
    row = ConsumerPosition.objects.get(topic=clicks_topic())
    assert row.skipped_malformed == malformed
    assert "refusing 1 counter(s) of ended incarnations" in clicks_consumer.output()
    assert shown() == before

    # A replay of the whole topic from offset 0: every report of A is refused again.
    assert clicks_consumer.stop() == 0
    ConsumerPosition.objects.filter(topic=clicks_topic()).update(next_offset=0)
    clicks_consumer.start()
    wait_until(lambda: position() == end, timeout=30, what="the replay from offset 0")
    assert shown() == before
    assert set(ClickCounter.objects.values_list("incarnation", flat=True)) == {b, c}

    # Nothing more to do at the next run.
    again = pruning.prune(now=datetime.now(timezone.utc) + HOUR)
    assert (again.incarnations_ended, again.fold.incarnations, again.errors) == ([], [], [])

    # A replica whose status names the ended incarnation (its reports of it are refused) is an
    # ERROR at every prune.
    send([status(f"n3{tag}", a)], replicas_topic())
    caplog.clear()
    pruning.prune(now=datetime.now(timezone.utc) + HOUR)
    assert any(r.levelname == "ERROR" and f"n3{tag}" in r.getMessage() and a in r.getMessage()
               for r in caplog.records)


def test_a_fold_interrupted_before_kafka_acknowledged_is_finished_by_the_next_run(
    transactional_db,
):
    """The incarnation is refused from the moment it is recorded as ended; its counters stay
    (and count) until their tombstones are acknowledged, then fold."""
    link = services.link_create(longurl="https://example.com/prune/resume").link
    clicks_apply_batch(topic=clicks_topic(), partition=0, expected_position=None,
                       records=[Rec(0, *report(link.tinyurl, "n", "gone1", 9))])
    assert pruning.incarnations_end(current=set(), now=NOW + HOUR, quiet_seconds=60) == ["gone1"]

    def broken():
        raise KafkaError("Kafka is away")

    with pytest.raises(KafkaError):
        pruning.incarnations_fold(producer_factory=broken)
    assert ClickCounter.objects.filter(incarnation="gone1").count() == 1
    # Refused meanwhile: a higher report changes nothing.
    result = clicks_apply_batch(topic=clicks_topic(), partition=0, expected_position=1,
                                records=[Rec(1, *report(link.tinyurl, "n", "gone1", 20))])
    assert (result.raised, result.refused_ended) == (0, 1)
    folded = pruning.incarnations_fold()
    assert (folded.incarnations, folded.counters, folded.clicks) == (["gone1"], 1, 9)
    link.refresh_from_db()
    assert link.clicks == 9 and selectors.link_clicks_by_node(link_id=link.pk) == {"n": 9}

    # A later life of the same replica's Redis folds into the same (link, node) row.
    clicks_apply_batch(topic=clicks_topic(), partition=0, expected_position=2,
                       records=[Rec(2, *report(link.tinyurl, "n", "gone2", 4))])
    assert pruning.incarnations_end(current=set(), now=NOW + HOUR, quiet_seconds=60) == ["gone2"]
    assert pruning.incarnations_fold().clicks == 4
    assert list(FoldedClicks.objects.values_list("node", "clicks")) == [("n", 13)]
    link.refresh_from_db()
    assert link.clicks == 13 and not ClickCounter.objects.exists()


# --- 3. replicas gone -------------------------------------------------------------------------


def replicas_page_nodes(admin_client) -> set[str]:
    page = admin_client.get("/admin/links/replica/").content.decode()
    return set(re.findall(r'data-node="([^"]+)"', page))


def test_a_gone_replica_is_tombstoned_and_leaves_the_page(admin_client, settings):
    tag = re.sub(r"\W", "", settings.SHORTENER_USER)[-8:]
    old, live = f"old-{tag}", f"live-{tag}"
    send([status(old, None)], replicas_topic())
    statuses = replicas.replica_statuses_read(timeout=10).newest
    first = statuses[old][1]
    # The live replica's status must carry a later broker time than the old one's.
    wait_until(lambda: send([status(live, None)], replicas_topic())
               or replicas.replica_statuses_read(timeout=10).newest[live][1] > first,
               timeout=10, what="a later broker timestamp")
    seen_live = replicas.replica_statuses_read(timeout=10).newest[live][1]
    assert {old, live} <= replicas_page_nodes(admin_client)

    # At a time when the old status is older than the gone time and the live one is not.
    settings.SHORTENER_REPLICA_GONE_SECONDS = 3600
    now = first + timedelta(seconds=3600) + (seen_live - first) / 2
    view = replicas.replicas_view(now=now)
    assert live in {r.node for r in view.replicas} and old not in {r.node for r in view.replicas}
    result = pruning.prune(now=now)
    assert old in result.replicas_gone and live not in result.replicas_gone
    assert result.errors == []

    # The topic's last record for the old node is a tombstone; the page (at the real time, with
    # the default gone time of seven days) no longer shows it, and shows the live one.
    consumer = replicas_reader_make()
    tp = TopicPartition(replicas_topic(), 0)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end, last = consumer.end_offsets([tp])[tp], {}
        while consumer.position(tp) < end:
            for recs in consumer.poll(timeout_ms=500).values():
                last.update({r.key: r.value for r in recs})
    finally:
        consumer.close()
    assert last[old.encode()] is None and last[live.encode()] is not None
    settings.SHORTENER_REPLICA_GONE_SECONDS = 7 * 24 * 3600
    nodes = replicas_page_nodes(admin_client)
    assert live in nodes and old not in nodes

    # A replica that comes back is shown again: its new status follows the tombstone.
    send([status(old, None)], replicas_topic())
    assert old in replicas_page_nodes(admin_client)


def test_manage_py_prune_prints_what_it_did_and_fails_while_clicks_are_behind(
    transactional_db, capsys
):
    end = clicks_topic_end()
    send([report("aBcDeF1", "n", "cmd1", 1)], clicks_topic())  # nobody applies it
    ConsumerPosition.objects.create(topic=clicks_topic(), partition=0, next_offset=end)
    with pytest.raises(CommandError, match="consume_clicks is behind"):
        call_command("prune", "--catch-up-seconds", "0.1")
    ConsumerPosition.objects.update(next_offset=end + 1)  # as if consume_clicks applied it
    call_command("prune")
    out = capsys.readouterr().out
    assert out.startswith("buckets: 0 hourly row(s) rolled into days, 0 dropped; 0 position "
                          "sample(s) thinned; incarnations:")
