"""The replica's redirect path as it is deployed: gunicorn with uvicorn's worker serving
shortener_project.asgi (testkit.Replica.start_web), real redis-server. Links are written
straight into the replica's Redis in the form consume_links writes (keys.LinkValue)."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import requests

from redirects import keys
from testkit import port_open, sample, scrape, wait_until

HIST = "shortener_request_duration_seconds"
NOT_FOUND = {"error": "no such link"}


def store(replica, links: dict[str, str | None], *, expires_at: int | None = None) -> None:
    """Active links (longurl None: disabled), version 1, with the given expiry (ms) or none;
    and the ready mark, as consume_links leaves it once caught up (else a missing key is a
    503, not a 404: test_a_missing_link_is_503_while_the_replica_is_not_ready; and every link
    is 503 in a Redis no consume_links has caught up with: redirects/incarnation.py)."""
    replica.links_ready()
    if links:
        replica.redis.mset({
            keys.link_key(t): keys.link_value_encode(
                keys.LinkValue(version=1, expires_at=expires_at, longurl=longurl))
            for t, longurl in links.items()})


def member(replica, tinyurl: str) -> bytes:
    """The counter's name in the due/dirty sets: `<incarnation>:<tinyurl>`."""
    return keys.clicks_member(incarnation=replica.incarnation(), tinyurl=tinyurl).encode()


def commands_run(replica) -> dict[str, int]:
    """Redis' own count of the commands it ran since CONFIG RESETSTAT, by name."""
    stats = replica.redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items()}


@pytest.fixture
def replica(replica_factory):
    replica = replica_factory(start=False)
    replica.start_web()
    return replica


def test_get_redirects_and_counts_head_redirects_without_counting(replica):
    store(replica, {"Abc1234": "https://example.com/landing"})
    for _ in range(3):
        response = replica.get("Abc1234")
        assert response.status_code == 302
        assert response.headers["Location"] == "https://example.com/landing"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.content == b""
    assert replica.clicks_count("Abc1234") == 3
    for _ in range(2):
        head = replica.get("Abc1234", method="HEAD")
        assert head.status_code == 302
        assert head.headers["Location"] == "https://example.com/landing"
        assert head.headers["Cache-Control"] == "no-store"
    assert replica.clicks_count("Abc1234") == 3  # HEAD is not a click
    # The click left its marks for the reporter: an incarnation named, its counter dirty.
    assert replica.incarnation() is not None
    assert replica.redis.smembers(keys.clicks_dirty_key()) == {member(replica, "Abc1234")}


def test_unknown_codes_are_404_json_and_count_nothing(replica):
    store(replica, {})
    for method in ("GET", "HEAD"):
        response = replica.get("Nope123", method=method)
        assert response.status_code == 404
        assert response.headers["Content-Type"] == "application/json"
    assert replica.get("Nope123").json() == NOT_FOUND
    assert replica.clicks_count("Nope123") == 0
    assert not replica.redis.exists(keys.clicks_dirty_key())


# Not tinyurls: too short or long for an alias (3-64), a character outside [A-Za-z0-9_-], more
# than one path segment, a reserved name in another case (its own spelling is Django's view).
@pytest.mark.parametrize("path", ["Ab", "A" * 65, "Abc.123", "Abc123%21", "Abc1234/",
                                  "Abc1234/x", "", "Metrics", "HEALTHZ"])
def test_malformed_codes_are_404_json_without_a_redis_command(replica, path):
    replica.redis.config_resetstat()
    response = replica.get(path)
    assert response.status_code == 404
    assert response.json() == NOT_FOUND
    ran = commands_run(replica)
    assert not {"get", "evalsha", "eval", "script|load"} & set(ran), ran


def test_other_methods_are_405_with_allow_and_count_nothing(replica):
    store(replica, {"Abc1234": "https://example.com/landing"})
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        response = replica.get("Abc1234", method=method)
        assert response.status_code == 405, method
        assert response.headers["Allow"] == "GET, HEAD"
        assert response.json() == {"error": f"method {method} is not allowed; use GET"}
    assert replica.clicks_count("Abc1234") == 0


def test_everything_else_is_answered_by_django_as_before(replica):
    assert replica.get("healthz").json() == {"status": "ok"}
    # /readyz from consume_links' heartbeat and ready mark (what it writes while it runs).
    not_ready = replica.get("readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["reason"] == "consume_links is not running (no heartbeat)"
    seconds, micros = replica.redis.time()
    replica.redis.set(keys.links_heartbeat_key(), seconds * 1000 + micros // 1000)
    # No incarnation check has run on this Redis yet (nothing has read a link): it may be a
    # restored backup, so not ready whatever its marks say.
    not_ready = replica.get("readyz")
    assert not_ready.status_code == 503
    assert "has not been checked yet" in not_ready.json()["reason"]
    replica.redis.set(keys.clicks_runid_key(), replica.redis.info("server")["run_id"])
    not_ready = replica.get("readyz")
    assert not_ready.status_code == 503
    assert "not caught up" in not_ready.json()["reason"]
    replica.redis.set(keys.links_ready_key(), "1")  # what consume_links sets once caught up
    assert (replica.get("readyz").status_code, replica.get("readyz").json()) == (
        200, {"status": "ready"})
    # A heartbeat older than SHORTENER_READY_STALE_SECONDS (15 s): out of service again.
    replica.redis.set(keys.links_heartbeat_key(), seconds * 1000 + micros // 1000 - 60_000)
    stale = replica.get("readyz")
    assert stale.status_code == 503
    assert "consume_links is stopped or stuck" in stale.json()["reason"]
    metrics = replica.get("metrics")
    assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    for path in ("no/such/thing", "static/x.css", "admin/"):
        response = replica.get(path)
        assert (response.status_code, response.json()) == (404, NOT_FOUND), path


# Each is stored and must come back in Location byte for byte.
LONGURLS = [
    "https://example.com/a%20b/c%2Fd?q=%E2%82%AC&r=%e2%82%ac",
    "https://example.com/search?q=a+b&q=c&empty=&flag#section-2",
    "http://example.com:8080/path;params?x=1&y=2#frag/with/slashes?and=query",
    "https://example.com/?redirect=https%3A%2F%2Fother.example%2F%3Fa%3D1%26b%3D2",
    "https://example.com/%7Euser/file.tar.gz#%23hash",
    "https://example.com/it's(fine)*!~$,@:/x",
    "https://[2001:db8::1]:8443/ipv6?x=%5B%5D",
    "https://example.com/" + "long-segment/" * 500 + "?" + "k=v&" * 500,
]


def test_location_is_the_stored_longurl_byte_for_byte(replica):
    links = {f"Loc{i:04d}": longurl for i, longurl in enumerate(LONGURLS)}
    store(replica, links)
    for tinyurl, longurl in links.items():
        for method in ("GET", "HEAD"):
            response = replica.get(tinyurl, method=method)
            assert response.status_code == 302
            # requests decodes header bytes as latin-1: encoding back gives the bytes sent.
            assert response.headers["Location"].encode("latin-1") == longurl.encode(), longurl


def test_503_while_redis_is_away_then_serving_again_without_a_restart(replica_factory):
    replica = replica_factory(start=False)
    replica.start_web(workers=2)
    links = {"Abc1234": "https://example.com/landing"}
    store(replica, links)
    assert replica.get("Abc1234").status_code == 302
    replica._stop(replica.redis_proc, signal.SIGKILL)
    for method in ("GET", "HEAD"):
        for _ in range(3):
            # New connections, so that both workers meet the outage.
            response = requests.request(method, f"{replica.url}/Abc1234", allow_redirects=False,
                                        timeout=10)
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "1"
            if method == "GET":
                assert response.json() == {"error": "temporarily unavailable"}
    assert replica.get("healthz").status_code == 200  # alive, only unable to redirect
    # Redis comes back empty on the same port (its script cache too): links are loaded again
    # (consume_links' job), and every worker serves again by itself.
    replica.start_redis()
    store(replica, links)
    replica.redis.config_resetstat()

    def click(_: int) -> int:
        return requests.get(f"{replica.url}/Abc1234", allow_redirects=False, timeout=10).status_code

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(click, range(200)))
    assert statuses == [302] * 200
    assert replica.clicks_count("Abc1234") == 200  # the clicks refused by NOSCRIPT, sent again
    # The script was loaded again once per worker at most, not once per click in flight.
    assert commands_run(replica).get("script|load", 0) <= 2


def test_64_clients_200_clicks_each_over_50_links_every_count_exact(replica_factory):
    """The pipelining neither loses, merges nor mixes up a click: every answer carries its own
    link's Location, every counter is exact, and each link is due for a report exactly when its
    count reached a hundred."""
    replica = replica_factory(start=False)
    replica.start_web(workers=2)
    links = {f"Conc{i:03d}": f"https://example.com/concurrent/{i}?n={i}#c" for i in range(50)}
    store(replica, links)
    # Counts around the hundreds (99, 100, 101, 199, 200, ...), the last link taking the rest.
    tinyurls = list(links)
    boundaries = [99, 100, 101, 199, 200, 201, 299, 300, 301, 1]
    counts = {t: boundaries[i % len(boundaries)] for i, t in enumerate(tinyurls[:-1])}
    counts[tinyurls[-1]] = 64 * 200 - sum(counts.values())
    assert counts[tinyurls[-1]] > 0
    plan = [t for t, n in counts.items() for _ in range(n)]
    random.Random(7).shuffle(plan)
    per_client = [plan[c * 200:(c + 1) * 200] for c in range(64)]

    async def client(mine: list[str]) -> list[tuple[str, int, str | None]]:
        async with httpx.AsyncClient(base_url=replica.url, timeout=30,
                                     limits=httpx.Limits(max_connections=1)) as http:
            answers = []
            for tinyurl in mine:
                response = await http.get(f"/{tinyurl}")
                answers.append((tinyurl, response.status_code, response.headers.get("location")))
            return answers

    async def run() -> list[list[tuple[str, int, str | None]]]:
        return await asyncio.gather(*(client(mine) for mine in per_client))

    results = asyncio.run(run())
    wrong = [(t, status, location) for answers in results for t, status, location in answers
             if status != 302 or location != links[t]]
    assert wrong == []
    incarnation = replica.incarnation()
    stored = dict(zip(tinyurls, replica.redis.mget([
        keys.clicks_counter_key(incarnation=incarnation, tinyurl=t) for t in tinyurls])))
    assert {t: int(v or 0) for t, v in stored.items()} == counts
    assert replica.redis.smembers(keys.clicks_due_key()) == {
        member(replica, t) for t, n in counts.items() if n >= 100}
    assert replica.redis.smembers(keys.clicks_dirty_key()) == {
        member(replica, t) for t in tinyurls}
    # Every click in one incarnation, the one Redis' counter of redirects served names.
    assert replica.redis.hgetall(keys.clicks_served_key()) == {
        incarnation.encode(): str(64 * 200).encode()}


def test_expired_disabled_and_unreadable_links_through_the_asgi_path(replica):
    """410 JSON with Cache-Control: no-store once a link expired, 404 JSON for a disabled link
    and a value the replica does not read (a format-1 value): for GET and HEAD, nothing
    counted; an expiry still ahead redirects and counts."""
    now_ms = int(time.time() * 1000)
    store(replica, {"Gone123": "https://example.com/gone"}, expires_at=now_ms - 1000)
    store(replica, {"Later12": "https://example.com/later"}, expires_at=now_ms + 3_600_000)
    store(replica, {"Down123": None})
    replica.redis.set(keys.link_key("Fmt1abc"), "https://example.com/format-1")
    for method in ("GET", "HEAD"):
        gone = replica.get("Gone123", method=method)
        assert gone.status_code == 410, method
        assert gone.headers["Cache-Control"] == "no-store"
        assert gone.headers["Content-Type"] == "application/json"
        if method == "GET":
            assert gone.json() == {"error": "this link has expired"}
        for tinyurl in ("Down123", "Fmt1abc"):
            response = replica.get(tinyurl, method=method)
            assert response.status_code == 404, (tinyurl, method)
            assert response.headers["Content-Type"] == "application/json"
            if method == "GET":
                assert response.json() == NOT_FOUND
        later = replica.get("Later12", method=method)
        assert (later.status_code, later.headers["Location"]) == (302,
                                                                  "https://example.com/later")
    assert replica.clicks_counts("Gone123") == {}
    assert replica.clicks_counts("Down123") == {}
    assert replica.clicks_counts("Fmt1abc") == {}
    assert replica.clicks_count("Later12") == 1


def test_clicks_after_a_redis_restore_go_to_a_new_incarnation_through_the_asgi_path(
        replica_factory):
    """Redis restarted from an older snapshot while two workers serve many concurrent clicks:
    every click after the restore is answered 503 and counted nowhere until consume_links has
    checked what Redis holds (test_redis_restored.py; here its step is done by hand: no
    consumer runs), then counted in a new incarnation, none in the old counter (whose value the
    master may already hold higher). No reporter runs: the check is the redirect path's own
    (clicks.click_script_reload_async)."""
    replica = replica_factory(start=False)
    replica.start_web(workers=2)
    store(replica, {"Abc1234": "https://example.com/landing"})

    def click(_: int) -> int:
        # New connections: both workers serve.
        return requests.get(f"{replica.url}/Abc1234", allow_redirects=False,
                            timeout=10).status_code

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(click, range(30))) == {302}
    old = replica.incarnation()
    backup = replica.snapshot_redis()  # 30 clicks
    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(click, range(50))) == {302}
    assert replica.clicks_counts("Abc1234") == {old: 80}
    replica.restore_redis(backup)
    assert replica.clicks_counts("Abc1234") == {old: 30} and replica.incarnation() == old
    replica.redis.config_resetstat()
    # Each worker's connection, closed by the restart, is replaced before its next batch; the
    # clicks in flight together then all meet NOSCRIPT in each worker.
    with ThreadPoolExecutor(32) as pool:
        assert set(pool.map(click, range(200))) == {503}
    assert replica.clicks_counts("Abc1234") == {old: 30} and replica.incarnation() is None
    # consume_links' check (services.READY_SCRIPT): the ready mark back, the restarted one gone.
    replica.redis.set(keys.links_ready_key(), "1")
    replica.redis.delete(keys.links_restarted_key())
    with ThreadPoolExecutor(32) as pool:
        assert set(pool.map(click, range(200))) == {302}
    new = replica.incarnation()
    assert new not in (None, old)
    assert replica.clicks_counts("Abc1234") == {old: 30, new: 200}
    assert replica.redis.get(keys.clicks_runid_key()).decode() == \
        replica.redis.info("server")["run_id"]
    # One recovery per worker at most (the clicks in flight share it; a worker whose EVALSHA
    # comes after another's SCRIPT LOAD needs none: Redis' script cache is the server's), each
    # with its check, and one more check per worker's new connection (on_connect): two workers.
    ran = commands_run(replica)
    loads = ran.get("script|load", 0)
    assert 1 <= loads <= 2 and loads + 1 <= ran.get("eval", 0) <= loads + 2, ran


def test_a_missing_link_is_503_while_the_replica_is_not_ready(replica):
    """A Redis wiped (or restored from an older backup) lacks links the replica served a moment
    before, and its ready mark with them: until consume_links has read the topic again, a
    missing key is no proof that the link does not exist, so GET and HEAD answer 503 with
    Retry-After, not 404 (found by tools/chaos: live links answered 404 after a wipe). A link
    it holds is served meanwhile; once ready, a missing link is a 404 again."""
    store(replica, {"Abc1234": "https://example.com/landing"})
    replica.redis.delete(keys.links_ready_key())
    for method in ("GET", "HEAD"):
        response = replica.get("Nope123", method=method)
        assert (response.status_code, response.headers.get("Retry-After")) == (503, "1"), method
    assert "catching up" in replica.get("Nope123").json()["error"]
    assert replica.get("Abc1234").status_code == 302
    replica.redis.set(keys.links_ready_key(), "1")
    assert replica.get("Nope123").status_code == 404
    assert replica.get("Nope123", method="HEAD").status_code == 404


def test_the_redirect_path_is_in_the_metrics_summed_over_two_workers(replica_factory):
    replica = replica_factory(start=False)
    # gunicorn.conf.py keeps it if set: the test looks into it below.
    metrics_dir = replica.dir / "prometheus"
    replica.env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    replica.start_web(workers=2)
    store(replica, {"Abc1234": "https://example.com/landing"})

    def fetch(method: str, path: str) -> int:
        # A new connection each time: the kernel spreads them over both workers.
        return requests.request(method, f"{replica.url}/{path}", allow_redirects=False,
                                timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda _: fetch("GET", "Abc1234"), range(60))) == {302}
        assert set(pool.map(lambda _: fetch("GET", "Nope123"), range(25))) == {404}
        assert set(pool.map(lambda _: fetch("HEAD", "Abc1234"), range(10))) == {302}
        assert set(pool.map(lambda _: fetch("POST", "Abc1234"), range(5))) == {405}
        assert set(pool.map(lambda _: fetch("GET", "Abc.1234"), range(5))) == {404}  # malformed
    replica._stop(replica.redis_proc, signal.SIGKILL)
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda _: fetch("GET", "Abc1234"), range(7))) == {503}
    samples = scrape(f"{replica.url}/metrics")

    def count(method: str, status: str) -> float:
        return sample(samples, f"{HIST}_count", endpoint="redirect", method=method, status=status)

    # Every answer of the redirect path, once; malformed codes are Django's 404s, as before.
    assert {(m, s): count(m, s) for m, s in [("GET", "302"), ("GET", "404"), ("HEAD", "302"),
                                             ("POST", "405"), ("GET", "503")]} == {
        ("GET", "302"): 60, ("GET", "404"): 25, ("HEAD", "302"): 10, ("POST", "405"): 5,
        ("GET", "503"): 7}
    assert sample(samples, f"{HIST}_bucket", endpoint="redirect", method="GET", status="302",
                  le="+Inf") == 60
    assert 0 < sample(samples, f"{HIST}_sum", endpoint="redirect", method="GET",
                      status="302") < 60
    # Both workers answered redirects: the figures above are the sum of two processes' files.
    assert len(list(metrics_dir.glob("histogram_*.db"))) == 2


def test_workers_stop_when_their_master_is_killed(replica_factory):
    replica = replica_factory(start=False)
    replica.start_web(workers=2)
    store(replica, {"Abc1234": "https://example.com/landing"})
    assert replica.get("Abc1234").status_code == 302
    replica._stop(replica.web, signal.SIGKILL)
    # Each worker listens on its own socket (SO_REUSEPORT): the port closes once both are gone.
    wait_until(lambda: not port_open(replica.http_port), timeout=20,
               what="the orphaned workers to stop")
