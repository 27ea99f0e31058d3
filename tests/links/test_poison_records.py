"""Records produced straight into the links topic: a malformed one must be logged, counted and
skipped (never stop a replica or the master's relay); a forged state must be healed by the
master's audit (docs/delivery-guarantees.md, links topic)."""

from __future__ import annotations

import pytest

from links import services
from testkit import link_produce, tinyurl_new, wait_until
from tests.links.test_audit import audit_and_resend, audited_to_end, relay  # noqa: F401
from topics.links import links_topic, producer_get

POISON = {
    # json.loads raises ValueError (not JSONDecodeError) for an integer over 4,300 digits...
    "huge integer": lambda t: (
        '{"schema":2,"tinyurl":"%s","version":%s,"state":"active",'
        '"longurl":"https://example.com/p","expires_at":null,"created_at":"2026-01-01T00:00:00"}'
        % (t, "9" * 5000)).encode(),
    # ...and RecursionError for deep nesting.
    "deep nesting": lambda t: ('{"schema":2,"tinyurl":"%s","x":' % t + "[" * 20000
                               + "]" * 20000 + "}").encode(),
}


@pytest.mark.parametrize("kind", list(POISON))
def test_a_poison_record_is_skipped_and_the_replica_keeps_consuming(replica_factory, kind):
    replica = replica_factory()
    wait_until(lambda: "caught up" in replica.consumer_output(), timeout=30, what="catch-up")
    rejected_before = replica.stats().get("rejected", 0)
    poison_key = tinyurl_new()
    producer_get().send(links_topic(), key=poison_key.encode(),
                            value=POISON[kind](poison_key)).get(timeout=10)
    after = tinyurl_new()
    link_produce(after, 1, "https://example.com/after-poison")
    wait_until(lambda: replica.target(after) == "https://example.com/after-poison"
               or not replica.consumer_alive(), timeout=30, what="the link after the poison")
    assert replica.consumer_alive(), replica.consumer_output()[-2000:]
    assert replica.target(after) == "https://example.com/after-poison"
    assert replica.stats().get("rejected", 0) == rejected_before + 1


@pytest.mark.parametrize("kind", list(POISON))
def test_a_poison_record_does_not_stop_the_masters_audit(relay, kind):  # noqa: F811
    poison_key = tinyurl_new()
    producer_get().send(links_topic(), key=poison_key.encode(),
                            value=POISON[kind](poison_key)).get(timeout=10)
    wait_until(audited_to_end, timeout=30, what="the audit past the poison record")


def test_a_forged_record_with_a_large_version_is_healed(relay, replica_factory):  # noqa: F811
    """A record for an existing link with a version above 2**31 (the contract allows up to
    2**62): the audit must make the master's state win again on every replica."""
    link = services.link_create(longurl="https://example.com/forged-victim").link
    replica = replica_factory()
    link_produce(link.tinyurl, 2**31, "https://evil.example/forged")
    wait_until(lambda: replica.target(link.tinyurl) == "https://evil.example/forged",
               timeout=30, what="the forged record applied")
    audit_and_resend()
    wait_until(lambda: replica.target(link.tinyurl) == "https://example.com/forged-victim",
               timeout=30, what="the master's state back on the replica")
