"""links_create_many: many creates sharing one insert, one commit and one Kafka batch (what
/create's group commit and the bulk API run). Each item gets its own answer in input order; two
items for one longurl inside one batch get the same link; one item's refusal or a concurrent
batch never changes another's answer; a Kafka failure answers every item and loses nothing."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from links import protection, publishing, services
from links.models import Link
from links.services import CreateItem, LinkCreated, LinkDisabled, LinkExpired
from links.validation import LongurlRefused
from testkit import free_port, topic_end
from topics.links import links_topic, producer_reset


def _items(*longurls: object) -> list[CreateItem]:
    return [CreateItem(longurl=u) for u in longurls]


def test_two_items_for_one_longurl_in_one_batch_get_one_link(transactional_db):
    """The race inside one batch: the first item makes the link, the second gets the same."""
    a, b = services.links_create_many(_items("https://example.com/race", "https://example.com/race"))
    assert isinstance(a, LinkCreated) and isinstance(b, LinkCreated)
    assert (a.created, b.created) == (True, False)
    assert a.link.tinyurl == b.link.tinyurl
    assert Link.objects.filter(longurl="https://example.com/race").count() == 1


@pytest.mark.parametrize("padding", [0, services.INSERT_FIRST_MIN])
def test_answers_come_in_input_order_and_a_refusal_touches_nothing_else(transactional_db,
                                                                       padding):
    """Also in a batch large enough to insert before it reads (services.INSERT_FIRST_MIN): the
    existing, taken-down and expired links are found by the INSERT's conflicts, the same."""
    protection.blocked_host_add(host="evil.example")
    try:
        existing = services.link_create(longurl="https://example.com/existing").link
        gone = services.link_create(longurl="https://example.com/gone").link
        services.link_set_disabled(link=gone, disabled=True)
        ended = services.link_create(longurl="https://example.com/ended").link
        Link.objects.filter(pk=ended.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
        end = topic_end(links_topic())
        outcomes = services.links_create_many(_items(
            "https://example.com/new-1", "ftp://example.com/", "https://evil.example/x", 42,
            "https://example.com/existing", "https://example.com/gone",
            "https://example.com/ended", "https://example.com/new-2",
            *(f"https://example.com/padding/{i}" for i in range(padding))))
    finally:
        protection.blocklist_cache_clear()
    new1, ftp, evil, number, old, disabled, expired, new2 = outcomes[:8]
    assert all(o.created for o in outcomes[8:])
    assert new1.created and new2.created and new1.link.tinyurl != new2.link.tinyurl
    assert (ftp.code, evil.code, number.code) == ("scheme", "blocked_host", "type")
    assert all(isinstance(o, LongurlRefused) for o in (ftp, evil, number))
    assert (old.created, old.link.tinyurl) == (False, existing.tinyurl)
    assert isinstance(disabled, LinkDisabled) and disabled.link.tinyurl == gone.tinyurl
    assert isinstance(expired, LinkExpired) and expired.link.tinyurl == ended.tinyurl
    # Only the two new links were written and sent; both acknowledged and marked.
    assert Link.objects.count() == 5 + padding
    assert topic_end(links_topic()) == end + 2 + padding
    for created in (new1, new2):
        row = Link.objects.get(pk=created.link.pk)
        assert row.published_at is not None and row.published_offset is not None
        assert row.tinyurl == created.link.tinyurl


def test_concurrent_batches_sharing_longurls_in_opposite_orders_agree(transactional_db):
    """Two batches inserting the same longurls in opposite orders: the rows go in digest
    order, so neither deadlocks, and every longurl ends with one link both batches name."""
    longurls = [f"https://example.com/both/{i}" for i in range(300)]
    answers: dict[str, list] = {}
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def run(name: str, order: list[str]) -> None:
        try:
            start.wait()
            answers[name] = services.links_create_many(_items(*order))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=("up", longurls)),
               threading.Thread(target=run, args=("down", longurls[::-1]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    up = {o.link.longurl: o for o in answers["up"]}
    down = {o.link.longurl: o for o in answers["down"]}
    assert {u: o.link.tinyurl for u, o in up.items()} == \
        {u: o.link.tinyurl for u, o in down.items()}
    # Each longurl was created by exactly one of the two batches.
    assert all(up[u].created != down[u].created for u in longurls)
    assert Link.objects.count() == len(longurls)


@pytest.mark.parametrize("size", [5, services.INSERT_FIRST_MIN])
def test_a_kafka_failure_answers_every_item_and_loses_nothing(transactional_db, size):
    """In a batch large enough to insert before it reads too: the retry's INSERT finds the
    unacknowledged links, and they are sent again."""
    longurls = [f"https://example.com/kafka-down/{i}" for i in range(size)]
    producer_reset()
    try:
        with override_settings(KAFKA_BOOTSTRAP_SERVERS=[f"127.0.0.1:{free_port()}"],
                               SHORTENER_PUBLISH_TIMEOUT=1.0):
            outcomes = services.links_create_many(_items(*longurls))
    finally:
        producer_reset()
    assert all(isinstance(o, publishing.LinkPublishError) for o in outcomes)
    rows = Link.objects.filter(longurl__in=longurls)
    assert rows.count() == size and not rows.filter(published_at__isnull=False).exists()
    # Kafka is back: a retry of the same batch gets the same links, now acknowledged.
    tinyurls = dict(rows.values_list("longurl", "tinyurl"))
    again = services.links_create_many(_items(*longurls))
    assert [o.link.tinyurl for o in again] == [tinyurls[u] for u in longurls]
    assert not any(o.created for o in again)
    assert not Link.objects.filter(published_at__isnull=True).exists()


POOL = ["https://example.com/a", "https://example.com/A", "https://example.com/a?x=1",
        "https://b.example/", "http://b.example", "https://b.example:443/", "mailto:x@y.z",
        "http://127.0.0.1/", "", None, "https://c.example/ü", "https://c.example/%C3%BC"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.sampled_from(POOL), max_size=12), min_size=1, max_size=3))
def test_every_batch_answers_each_longurl_with_its_one_link(transactional_db, batches):
    """Any sequence of batches drawn from longurls that are equal in stored form, refused, or
    distinct: an accepted item always gets the one link of its stored form (the same in every
    batch), a refused one gets its reason and no row, and exactly one item ever says created."""
    Link.objects.all().delete()
    tinyurl_of: dict[str, str] = {}
    created = 0
    for batch in batches:
        outcomes = services.links_create_many(_items(*batch))
        assert len(outcomes) == len(batch)
        for longurl, outcome in zip(batch, outcomes):
            try:
                stored = services.validation.longurl_check(longurl)
            except LongurlRefused as exc:
                assert isinstance(outcome, LongurlRefused) and outcome.code == exc.code
                continue
            assert isinstance(outcome, LinkCreated), outcome
            assert outcome.link.longurl == stored
            assert tinyurl_of.setdefault(stored, outcome.link.tinyurl) == outcome.link.tinyurl
            created += outcome.created
    assert created == len(tinyurl_of) == Link.objects.count()
    assert dict(Link.objects.values_list("longurl", "tinyurl")) == tinyurl_of


@pytest.mark.parametrize("size", [1, 2500])
def test_one_commit_and_one_kafka_batch_whatever_the_size(transactional_db, size):
    """The shared costs: a batch of any size is one INSERT and one published mark (counted on
    the connection), and every link is acknowledged."""
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        outcomes = services.links_create_many(_items(*(f"https://example.com/size/{size}/{i}"
                                                       for i in range(size))))
    assert all(o.created for o in outcomes)
    inserts = [q for q in queries.captured_queries if "INSERT INTO links_link" in q["sql"]]
    marks = [q for q in queries.captured_queries if "UPDATE links_link" in q["sql"]]
    assert (len(inserts), len(marks)) == (1, 1)
    assert not Link.objects.filter(published_at__isnull=True).exists()
