"""A replica whose Redis restarts with data (an AOF or RDB loaded, a backup restored) holds what
it held then, which may be older than what it served since. Found by the chaos run
(tools/chaos): a backup restored under load served, for about half a second, links as they
were in the backup (an older target after the newer one, 404 for links created since). Now
every link is answered 503 from the restart until consume_links has checked its positions
(redirects/incarnation.py INCARNATION_SCRIPT, redirects/consumer.py _heartbeat)."""

from __future__ import annotations

import time

from redirects import keys
from testkit import link_produce, tinyurl_new, wait_until


def answers_until_served(replica, tinyurl: str, *, method: str = "GET",
                         timeout: float = 30) -> list[tuple[int, str | None]]:
    """Every answer to `tinyurl` until one is a 302 (the last)."""
    seen: list[tuple[int, str | None]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = replica.get(tinyurl, method=method)
        seen.append((response.status_code, response.headers.get("Location")))
        if response.status_code == 302:
            return seen
    raise AssertionError(f"no 302 within {timeout}s: {seen[-5:]}")


def test_a_restored_backup_never_serves_an_older_target(replica_factory):
    replica = replica_factory()
    tinyurl, fresh = tinyurl_new(), tinyurl_new()
    link_produce(tinyurl, 1, "https://example.com/restored/old")
    wait_until(lambda: replica.target(tinyurl) is not None, timeout=20, what="the link")
    replica.click(tinyurl, 2)
    backup = replica.snapshot_redis()
    old_incarnation = replica.incarnation()
    link_produce(tinyurl, 2, "https://example.com/restored/new")
    link_produce(fresh, 1, "https://example.com/restored/fresh")
    wait_until(lambda: replica.target(fresh) is not None
               and replica.target(tinyurl) == "https://example.com/restored/new",
               timeout=20, what="the newer states")
    replica.restore_redis(backup)  # the old target, no `fresh`, the old positions
    first = replica.get(tinyurl)
    assert first.status_code == 503 and first.headers["Retry-After"] == "1", first.text
    seen = answers_until_served(replica, tinyurl)
    assert all(status == 503 for status, _ in seen[:-1]), seen
    assert seen[-1] == (302, "https://example.com/restored/new")
    # Read again from the backup's positions: the link created after it is back too.
    assert answers_until_served(replica, fresh)[-1] == (302, "https://example.com/restored/fresh")
    assert replica.readyz()[0] == 200
    # The 503s counted nothing; the clicks since are in a new incarnation.
    counts = replica.clicks_counts(tinyurl)
    assert counts.pop(old_incarnation) == 2 and list(counts.values()) == [1], counts


def test_a_restart_that_kept_everything_is_503_only_until_the_positions_are_checked(
        replica_factory):
    """The same positions as consume_links applied: ready again at its next heartbeat, without
    reading anything; HEAD answers as GET does."""
    replica = replica_factory()
    tinyurl = tinyurl_new()
    link_produce(tinyurl, 1, "https://example.com/restored/kept")
    wait_until(lambda: replica.target(tinyurl) is not None, timeout=20, what="the link")
    wait_until(lambda: replica.readyz()[0] == 200, timeout=20, what="ready")
    # A click first: it stores the server's run id (the incarnation check), which is how a
    # later restart is told from a Redis the web never counted in.
    replica.click(tinyurl, 1)
    replica.restore_redis(replica.snapshot_redis())
    # The GET's NOSCRIPT noticed the restart (consume_links may clear it any moment after).
    assert replica.get(tinyurl).status_code == 503
    assert answers_until_served(replica, tinyurl, method="HEAD")[-1] == (
        302, "https://example.com/restored/kept")
    wait_until(lambda: replica.readyz()[0] == 200, timeout=20, what="ready again")
    assert not replica.redis.exists(keys.links_restarted_key())


def test_a_head_first_after_a_restart_is_503_too(replica_factory):
    """Not only a GET (whose NOSCRIPT runs the incarnation check): a HEAD that came first after
    a restart read the restored data before anything noticed (a link-preview bot's HEAD got
    the older target).
    The web's Redis client now runs the check on every new connection (PipelinedRedis'
    on_connect, incarnation.incarnation_check_on_connect). consume_links is stopped here so that
    nothing else notices the restart."""
    replica = replica_factory()
    tinyurl = tinyurl_new()
    link_produce(tinyurl, 1, "https://example.com/restored/head-old")
    wait_until(lambda: replica.readyz()[0] == 200 and replica.target(tinyurl) is not None,
               timeout=20, what="ready with the link")
    replica.click(tinyurl, 1)  # the web stores the server's run id
    incarnation = replica.incarnation()
    backup = replica.snapshot_redis()
    link_produce(tinyurl, 2, "https://example.com/restored/head-new")
    wait_until(lambda: replica.target(tinyurl) == "https://example.com/restored/head-new",
               timeout=20, what="the newer target")
    replica.stop_consumer()
    replica.restore_redis(backup)
    for _ in range(3):
        response = replica.get(tinyurl, method="HEAD")
        assert response.status_code == 503, (response.status_code, response.headers)
        assert "Location" not in response.headers
    assert replica.redis.exists(keys.links_restarted_key())
    assert replica.clicks_counts(tinyurl) == {incarnation: 1}  # nothing counted meanwhile
    replica.start_consumer()
    assert answers_until_served(replica, tinyurl, method="HEAD")[-1] == (
        302, "https://example.com/restored/head-new")


def test_a_restarted_redis_that_refuses_writes_is_not_served(replica_factory):
    """A restart into a full Redis: the restarted mark cannot be written, so nothing it holds
    can be checked: every request is 503 until it accepts writes again. A full Redis that did
    not restart is still served (tests/redirects/test_writes_refused.py)."""
    replica = replica_factory()
    tinyurl = tinyurl_new()
    link_produce(tinyurl, 1, "https://example.com/restored/full")
    wait_until(lambda: replica.readyz()[0] == 200 and replica.target(tinyurl) is not None,
               timeout=20, what="ready with the link")
    replica.click(tinyurl, 1)
    replica.stop_consumer()
    replica.restore_redis(replica.snapshot_redis())
    replica.redis.config_set("maxmemory", 1)  # every write refused (OOM), reads answered
    try:
        for method in ("HEAD", "GET"):
            response = replica.get(tinyurl, method=method)
            assert response.status_code == 503, (method, response.status_code)
    finally:
        replica.redis.config_set("maxmemory", 0)
    # Writes accepted again: the check runs, takes the mark, and the link waits for
    # consume_links like after any restart.
    assert replica.get(tinyurl, method="HEAD").status_code == 503
    assert replica.redis.exists(keys.links_restarted_key())
    replica.start_consumer()
    assert answers_until_served(replica, tinyurl, method="HEAD")[-1] == (
        302, "https://example.com/restored/full")


def test_a_wiped_redis_serves_nothing_older_while_it_reloads(replica_factory):
    """A Redis restarted empty is read again from the topic's start: until consume_links has
    caught up, it holds each link at the version read so far, older than the one it served
    before the wipe. Found by the chaos run (seed 2). Here the reload is held between a link's
    two records: its first version written as the reload writes it, consume_links stopped."""
    replica = replica_factory()
    tinyurl = tinyurl_new()
    link_produce(tinyurl, 1, "https://example.com/wiped/first")
    link_produce(tinyurl, 2, "https://example.com/wiped/second")
    wait_until(lambda: replica.target(tinyurl) == "https://example.com/wiped/second",
               timeout=20, what="the second target")
    assert replica.get(tinyurl).headers["Location"] == "https://example.com/wiped/second"
    replica.stop_consumer()
    replica.restart_redis_empty()
    replica.redis.set(keys.link_key(tinyurl), "1||https://example.com/wiped/first")
    for method in ("GET", "HEAD", "GET"):
        response = replica.get(tinyurl, method=method)
        assert response.status_code == 503, (method, response.status_code,
                                             response.headers.get("Location"))
    assert replica.redis.exists(keys.links_restarted_key())
    replica.start_consumer()
    assert answers_until_served(replica, tinyurl)[-1] == (302, "https://example.com/wiped/second")
    wait_until(lambda: replica.readyz()[0] == 200, timeout=20, what="ready again")
