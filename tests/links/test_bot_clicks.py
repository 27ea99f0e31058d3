"""Human and bot clicks counted apart (issue 18): a bot's redirect is answered like any other and
counted apart, end to end (a replica's ASGI path and Redis, report_clicks, Kafka, the master's
consume_clicks, PostgreSQL); the fold of bots is exact like the fold of clicks (replays, late
milestones, older schemas, ended incarnations); the admin and the API's selector show both."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from django.db.models import Sum

from links import pruning, selectors, services
from links.models import ClickBucket, ClickCounter, ConsumerPosition, FoldedClicks, Link
from links.totals import clicks_apply_batch
from redirects import keys
from testkit import FakeRecord as Rec
from testkit import wait_until
from tests.redirects.test_bots import BROWSERS
from topics.clicks import click_batch_encode, click_report_encode, clicks_topic

NOW = datetime.now(timezone.utc)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
SLACKBOT = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
FACEBOOK = "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"
MAIL_SCANNER = "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))"


def kinds(tinyurl: str) -> tuple[int, int]:
    link = Link.objects.get(tinyurl=tinyurl)
    return link.clicks, link.bot_clicks


def test_bots_are_redirected_and_counted_apart_through_kafka_into_the_totals(
    master, replica_factory, clicks_consumer, admin_client,
):
    replica = replica_factory(reporter=True)
    tinyurl = master.create("https://example.com/clicks/bots")
    wait_until(lambda: replica.target(tinyurl) is not None, timeout=20, what="the link")
    for user_agent, times in ((GOOGLEBOT, 3), (SLACKBOT, 2), (FACEBOOK, 1), (MAIL_SCANNER, 1),
                              (BROWSERS[0], 5), (BROWSERS[2], 2)):
        replica.click(tinyurl, times, user_agent=user_agent)
    # No User-Agent header at all: a bot (every browser sends one).
    response = replica.get(tinyurl, headers={"User-Agent": None})
    assert response.status_code == 302
    assert response.headers["Location"] == "https://example.com/clicks/bots"
    incarnation = replica.incarnation()
    bots_key = keys.clicks_bots_prefix() + keys.clicks_member(incarnation=incarnation,
                                                              tinyurl=tinyurl)
    assert (replica.clicks_count(tinyurl), int(replica.redis.get(bots_key))) == (15, 8)

    assert replica.stop_reporter() == 0  # its final flush reports both counts
    wait_until(lambda: kinds(tinyurl) == (15, 8), timeout=20, what="15 clicks, 8 of bots")
    counter = ClickCounter.objects.get(link__tinyurl=tinyurl)
    assert (counter.count, counter.bots, counter.node) == (15, 8, replica.name)

    link = Link.objects.get(tinyurl=tinyurl)
    assert selectors.link_clicks_get(link=link).as_dict() == {
        "total": 15, "human": 7, "bot": 8,
        "by_replica": {replica.name: {"total": 15, "human": 7, "bot": 8}}}
    # The admin: the list's columns and the link's page.
    page = admin_client.get(f"/admin/links/link/?q={tinyurl}").content.decode()
    assert '<td class="field-human_clicks">7</td>' in page
    assert '<td class="field-bot_clicks">8</td>' in page
    page = admin_client.get(f"/admin/links/link/{link.pk}/change/").content.decode()
    assert f"{replica.name}: 7 / 8" in page  # human / bot clicks by replica

    # Replayed from offset 0: nothing changes.
    end = ConsumerPosition.objects.get(topic=clicks_topic()).next_offset
    assert clicks_consumer.stop() == 0
    ConsumerPosition.objects.filter(topic=clicks_topic()).update(next_offset=0)
    clicks_consumer.start()
    wait_until(lambda: ConsumerPosition.objects.get(topic=clicks_topic()).next_offset >= end,
               timeout=30, what="the topic replayed")
    assert kinds(tinyurl) == (15, 8)
    assert ClickBucket.objects.filter(link=link).aggregate(s=Sum("clicks"))["s"] == 15


def apply(records: list[tuple[bytes, bytes]], position: int | None) -> int:
    start = position or 0
    result = clicks_apply_batch(topic=clicks_topic(), partition=0, expected_position=position,
                                records=[Rec(start + i, k, v) for i, (k, v) in enumerate(records)])
    return result.next_offset


def batch(node: str, incarnation: str, counts, at: datetime = NOW) -> tuple[bytes, bytes]:
    return click_batch_encode(node=node, incarnation=incarnation, counts=counts, reported_at=at)


def test_the_fold_of_bots_is_exact_across_schemas_late_reports_replays_and_ended_incarnations(
    transactional_db,
):
    link = services.link_create(longurl="https://example.com/clicks/bots-fold").link
    t = link.tinyurl
    # An old replica's reports (schemas 2 and 3): clicks without bots, read as human ones.
    position = apply([click_report_encode(tinyurl=t, node="a", incarnation="i1", count=40,
                                          reported_at=NOW),
                      batch("a", "i1", [(t, 60)])], None)
    assert kinds(t) == (60, 0)
    # The upgraded replica, same incarnation: a milestone (the hundred, its bots' lower bound),
    # then the exact flush at the same count, which raises the bots alone.
    position = apply([batch("a", "i1", [(t, 100, 10)])], position)
    assert kinds(t) == (100, 10)
    position = apply([batch("a", "i1", [(t, 100, 13)])], position)
    assert kinds(t) == (100, 13)
    # A late, older report lowers nothing; another incarnation adds its own.
    position = apply([batch("a", "i1", [(t, 90, 9)]), batch("b", "i2", [(t, 7, 7)])], position)
    assert kinds(t) == (107, 20)
    # Everything again, in one batch: nothing changes.
    again = [click_report_encode(tinyurl=t, node="a", incarnation="i1", count=40,
                                 reported_at=NOW),
             batch("a", "i1", [(t, 60)]), batch("a", "i1", [(t, 100, 10)]),
             batch("a", "i1", [(t, 100, 13)]), batch("b", "i2", [(t, 7, 7)])]
    position = apply(again, position)
    assert kinds(t) == (107, 20)
    # The hourly buckets hold every click (bots included), and add up to the total.
    assert ClickBucket.objects.filter(link=link).aggregate(s=Sum("clicks"))["s"] == 107

    # i2 ends: its counter folds with its bots, and the link's totals and per-node view stay.
    later = NOW + timedelta(hours=1)
    assert pruning.incarnations_end(current={"i1"}, now=later, quiet_seconds=60) == ["i2"]
    assert pruning.incarnations_fold().clicks == 7
    assert list(FoldedClicks.objects.values_list("node", "clicks", "bots")) == [("b", 7, 7)]
    link.refresh_from_db()
    assert selectors.link_clicks_get(link=link).as_dict() == {
        "total": 107, "human": 87, "bot": 20,
        "by_replica": {"a": {"total": 100, "human": 87, "bot": 13},
                       "b": {"total": 7, "human": 0, "bot": 7}}}
