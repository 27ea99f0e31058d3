"""A replica reports its status soon after consume_links applied records, not only every
SHORTENER_STATUS_SECONDS (redirects/status.py): the master's create-and-wait answers on it. Real
Redis and Kafka; the publisher runs in this process, its regular interval an hour long."""

from __future__ import annotations

import threading
import time
import uuid

from redirects import keys
from redirects.status import StatusPublisher
from testkit import topic_read, wait_until
from topics.replicas import replica_status_decode, replicas_topic


def statuses_of(node: str) -> list:
    return [replica_status_decode(r.key, r.value) for r in topic_read(replicas_topic())
            if r.key == node.encode() and r.value is not None]


def test_a_status_follows_newly_applied_positions_within_a_fraction_of_a_second(
        replica_factory):
    redis = replica_factory(start=False).redis
    redis.hset(keys.links_positions_key(), "0", "7")
    node = f"soon{uuid.uuid4().hex[:6]}"
    stop = threading.Event()
    publisher = StatusPublisher(redis=redis, stop=stop, node=node, interval=3600,
                                min_gap=0.1, poll=0.02)
    thread = threading.Thread(target=publisher.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: publisher.sent == 1, timeout=30, what="the first status")
        assert statuses_of(node)[-1].links_positions == {0: 7}
        for position in (8, 9, 12):
            applied = time.monotonic()
            redis.hset(keys.links_positions_key(), "0", str(position))
            wait_until(lambda: statuses_of(node)[-1].links_positions == {0: position},
                       timeout=10, what=f"a status with position {position}")
            # Well under the hour's interval: the poll (20 ms), the gap (100 ms) and a send.
            assert time.monotonic() - applied < 5
        assert publisher.sent == 4  # one a change: none while nothing moved
    finally:
        stop.set()
        thread.join(timeout=15)
    assert statuses_of(node)[-1].links_position == 12
