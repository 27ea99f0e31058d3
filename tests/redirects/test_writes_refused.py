"""A replica whose Redis refuses writes but still answers reads (memory full under noeviction,
a failed RDB snapshot with stop-writes-on-bgsave-error, a read-only Redis replica): it still
redirects, exactly as for a counted click; the clicks it could not count are counted in
shortener_clicks_uncounted_total{reason}; /readyz says so; counting resumes once Redis accepts
writes again. Each replica runs its own redis-server, consume_links and web server (gunicorn +
uvicorn's worker), as deployed."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import OutOfMemoryError, ResponseError

from redirects import counting as clicks
from redirects import keys, selectors
from testkit import (
    free_port,
    link_produce,
    redis_links_ready,
    sample,
    scrape,
    tinyurl_new,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

UNCOUNTED = "shortener_clicks_uncounted_total"


def refuse_writes(replica, how: str) -> None:
    redis = replica.redis
    if how == "oom":
        # Full: any memory in use is above 1 byte, and noeviction is Redis' default policy.
        assert redis.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        redis.config_set("maxmemory", 1)
    elif how == "misconf":
        # A snapshot that cannot be written (here: its file name is taken by a directory, so
        # the final rename fails, as a full disk would fail it) while save points are set:
        # stop-writes-on-bgsave-error (on by default) then refuses every write.
        redis.config_set("save", "3600 1")
        (replica.dir / "dump.rdb").mkdir()
        redis.bgsave()
        wait_until(lambda: redis.info("persistence")["rdb_last_bgsave_status"] == "err",
                   timeout=20, what="the failed snapshot")
    else:
        raise AssertionError(how)


def accept_writes(replica, how: str) -> None:
    redis = replica.redis
    if how == "oom":
        redis.config_set("maxmemory", 0)
    else:
        (replica.dir / "dump.rdb").rmdir()
        wait_until(lambda: redis.bgsave(), timeout=10, what="a snapshot to start")
        wait_until(lambda: redis.info("persistence")["rdb_last_bgsave_status"] == "ok",
                   timeout=20, what="a good snapshot")
        redis.config_set("save", "")


def uncounted(replica, reason: str) -> float:
    return sample(scrape(f"{replica.url}/metrics"), UNCOUNTED, reason=reason)


@pytest.mark.parametrize("how", ["oom", "misconf"])
def test_a_replica_whose_redis_refuses_writes_still_redirects_and_says_so(replica_factory, how):
    replica = replica_factory()
    tinyurl, expired = tinyurl_new(), tinyurl_new()
    link_produce(tinyurl, 1, "https://example.com/refused?q=1")
    link_produce(expired, 1, "https://example.com/expired",
                 expires_at=datetime.now(timezone.utc) - timedelta(minutes=1))
    wait_until(lambda: replica.readyz()[0] == 200 and replica.get(expired).status_code == 410,
               timeout=60, what="ready with both links")
    replica.click(tinyurl, 3)
    counted = replica.clicks_count(tinyurl)
    assert counted == 3

    refuse_writes(replica, how)
    try:
        for _ in range(5):
            response = replica.get(tinyurl)
            assert response.status_code == 302
            assert response.headers["Location"] == "https://example.com/refused?q=1"
            assert response.headers["Cache-Control"] == "no-store"
        # 404 and 410 exactly as for a counted click; HEAD as always.
        assert replica.get("Nope123").status_code == 404
        response = replica.get(expired)
        assert (response.status_code, response.json()) == (410, {"error": "this link has expired"})
        assert replica.get(tinyurl, method="HEAD").status_code == 302
        # Nothing of a refused click was written; the five lost clicks are counted as such
        # (the 404 and the 410 would have counted nothing).
        assert replica.clicks_count(tinyurl) == counted
        assert uncounted(replica, how) == 5
        status, body = replica.readyz()
        assert status == 503, body
        assert body["reason"].startswith(f"Redis refuses writes ({how}: "), body
        assert "clicks are not counted" in body["reason"]
        # A link published meanwhile cannot be applied: Redis refuses consume_links' writes too.
        later = tinyurl_new()
        link_produce(later, 1, "https://example.com/published-while-refused")
        assert replica.get(later).status_code == 404
    finally:
        accept_writes(replica, how)

    # Writes accepted again: counting resumes at once, the replica is ready again, and
    # consume_links applies the link published meanwhile (its retry backs off up to 5 s).
    replica.click(tinyurl, 2)
    assert replica.clicks_count(tinyurl) == counted + 2
    assert uncounted(replica, how) == 5
    wait_until(lambda: replica.readyz()[0] == 200, timeout=60, what="ready again")
    wait_until(lambda: replica.get(later).status_code == 302, timeout=60,
               what="the link published meanwhile, applied")


def test_a_read_only_redis_replica_still_redirects_and_says_so(replica_factory, test_data_dir):
    replica = replica_factory(start=False)
    replica.start_web()
    tinyurl = tinyurl_new()
    replica.redis.set(keys.link_key(tinyurl), "1||https://example.com/read-only")
    replica.links_ready()  # as consume_links leaves it: a missing link is a 404
    replica.click(tinyurl, 2)
    assert replica.clicks_count(tinyurl) == 2
    # Make the replica's Redis a read-only replica of another redis-server holding the same
    # data: copy it there first, then follow it (Redis' default: replica-read-only yes).
    port = free_port()
    other_dir = test_data_dir / f"{replica.name}-primary"
    other_dir.mkdir()
    primary = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(other_dir)],
        stdout=open(other_dir / "redis.log", "ab"), stderr=subprocess.STDOUT)
    try:
        import redis as redis_lib

        other = redis_lib.Redis(port=port)
        wait_until(other.ping, timeout=10, what="the other redis-server")
        other.replicaof("127.0.0.1", replica.redis_port)
        wait_until(lambda: other.info("replication")["master_link_status"] == "up",
                   timeout=20, what="the copy")
        wait_until(lambda: other.get(keys.link_key(tinyurl)) is not None, timeout=10,
                   what="the copied link")
        other.replicaof("no", "one")
        replica.redis.replicaof("127.0.0.1", port)
        wait_until(lambda: replica.redis.info("replication")["master_link_status"] == "up",
                   timeout=20, what="the replica's Redis following the other")
        for _ in range(4):
            response = replica.get(tinyurl)
            assert response.status_code == 302
            assert response.headers["Location"] == "https://example.com/read-only"
        assert replica.get("Nope123").status_code == 404
        assert replica.clicks_count(tinyurl) == 2
        assert uncounted(replica, "readonly") == 4
        status, body = replica.readyz()
        assert status == 503 and body["reason"].startswith("Redis refuses writes (readonly: ")
        replica.redis.replicaof("no", "one")
        replica.click(tinyurl, 1)
        assert replica.clicks_count(tinyurl) == 3
    finally:
        primary.kill()
        primary.wait()


def test_the_sync_path_reads_the_link_when_writes_are_refused(replica_factory):
    """The Django view's functions (manage.py runserver) against a real redis-server."""
    redis = replica_factory(start=False).redis
    redis.set(keys.link_key("Sync123"), "1||https://example.com/sync")
    redis_links_ready(redis)  # as consume_links leaves it: a missing link is None (404)
    assert clicks.click_call(redis=redis, tinyurl="Sync123") == "https://example.com/sync"
    before = REGISTRY.get_sample_value(UNCOUNTED, {"reason": "oom"}) or 0.0
    redis.config_set("maxmemory", 1)
    try:
        with pytest.raises(OutOfMemoryError) as refused:
            clicks.click_call(redis=redis, tinyurl="Sync123")
        assert clicks.writes_refused(refused.value) == "oom"
        assert selectors.link_read_uncounted(redis=redis, tinyurl="Sync123",
                                          error=refused.value) == "https://example.com/sync"
        assert selectors.link_read_uncounted(redis=redis, tinyurl="Nope123",
                                          error=refused.value) is None
        state = selectors.readiness_get(redis=redis, stale_seconds=15)
        assert not state.ready and state.writes_refused == "oom"
    finally:
        redis.config_set("maxmemory", 0)
    assert REGISTRY.get_sample_value(UNCOUNTED, {"reason": "oom"}) == before + 1
    # Another error is not a refusal: raised again, nothing read.
    with pytest.raises(ResponseError):
        selectors.link_read_uncounted(redis=redis, tinyurl="Sync123",
                                   error=ResponseError("WRONGTYPE Operation against a key"))
    # The write check changed nothing while writes were accepted: no probe key exists.
    assert selectors.readiness_get(redis=redis, stale_seconds=15).writes_refused is None
    assert redis.exists(keys.writes_probe_key()) == 0
