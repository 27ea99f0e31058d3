"""A replica's Redis restarted, restored from an older backup, wiped or full, at the edges a
tester found (each failed before its fix; the fix is named in each test's docstring): the
password form's POST and a protected link's cookie, a restored backup of the older value
format, /readyz before the incarnation check has run, a ready mark set after a stalled
catch-up; and a small randomized run of those faults under load on one replica.

Real processes only (testkit.Replica: redis-server, consume_links, gunicorn + uvicorn)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings

from redirects import keys, protected
from testkit import link_produce, tinyurl_new, wait_until
from topics.passwords import password_hash_make

SECRET = "restart-edges-cookie-secret"
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"}
FORM_HEADERS = {**BROWSER, "Content-Type": "application/x-www-form-urlencoded"}
TARGET = "https://example.com/edges/protected"


@pytest.fixture
def web_replica(replica_factory, settings):
    """A replica's Redis and web server, no consume_links (links are written into Redis in the
    form consume_links writes them, as tests/redirects/test_protected.py does): nothing clears
    the restarted mark, so what the web answers while it stands can be looked at at leisure."""
    settings.SHORTENER_LINK_COOKIE_SECRET = SECRET
    replica = replica_factory(start=False)
    replica.env.update(SHORTENER_LINK_COOKIE_SECRET=SECRET)
    replica.start_web()
    return replica


def store(replica, tinyurl: str, *, password_hash: str | None, version: int = 1,
          longurl: str = TARGET) -> None:
    replica.links_ready()  # as consume_links leaves it once caught up
    replica.redis.set(keys.link_key(tinyurl), keys.link_value_encode(keys.LinkValue(
        version=version, expires_at=None, longurl=longurl, password_hash=password_hash)))


def post(replica, tinyurl: str, password: str):
    return replica.http.post(f"{replica.url}/{tinyurl}", data={"password": password},
                             headers=FORM_HEADERS, allow_redirects=False, timeout=10)


def test_the_password_form_is_503_while_the_restarted_mark_stands(web_replica):
    """After a restore from an older backup every link is 503 until consume_links has checked
    what Redis holds, the password form's POST too. Before the fix (redirects/protected.py
    post_answer reads the marks with the link now) the POST read the backup's older value
    with a bare GET: the current password was answered 401 and counted against the client's
    limit, and a protected link the backup lacks 405."""
    replica = web_replica
    old_hash, new_hash = password_hash_make("old password"), password_hash_make("new password")
    tinyurl, later = tinyurl_new(), tinyurl_new()
    store(replica, tinyurl, password_hash=old_hash)
    assert replica.get(tinyurl, headers=BROWSER).status_code == 200  # the form; run id checked
    backup = replica.snapshot_redis()
    # Since the backup: the password was changed (version 2) and another protected link made.
    store(replica, tinyurl, password_hash=new_hash, version=2)
    store(replica, later, password_hash=new_hash)
    assert post(replica, tinyurl, "new password").status_code == 303
    replica.http.cookies.clear()

    replica.restore_redis(backup)
    answers = {"GET": replica.get(tinyurl, headers=BROWSER).status_code}
    assert replica.redis.exists(keys.links_restarted_key())  # the check ran: the mark stands
    answers["HEAD"] = replica.get(tinyurl, method="HEAD", headers=BROWSER).status_code
    answers["POST, the current password"] = post(replica, tinyurl, "new password").status_code
    answers["POST, a link made after the backup"] = post(replica, later, "new password").status_code
    failures = replica.redis.keys(f"{settings.SHORTENER_USER}:pwfail:*")
    assert answers == {"GET": 503, "HEAD": 503, "POST, the current password": 503,
                       "POST, a link made after the backup": 503}, answers
    assert failures == [], f"a right password counted as a failure: {failures}"


def test_a_protected_link_still_redirects_when_redis_refuses_writes(web_replica):
    """On a full Redis a redirect is answered and its click lost (docs/delivery-guarantees.md,
    "A Redis that refuses writes"), for a protected link with a valid cookie too. Before the
    fix (protected._let_through reads the link uncounted after a refused click, as
    redirects/asgi.py does for the first) that GET was 503. The form's POST stays 503 by
    design: a wrong password that cannot be counted is no attempt to check."""
    replica = web_replica
    hash_ = password_hash_make("open sesame")
    tinyurl, public = tinyurl_new(), tinyurl_new()
    store(replica, tinyurl, password_hash=hash_)
    store(replica, public, password_hash=None, longurl="https://example.com/edges/public")
    response = post(replica, tinyurl, "open sesame")
    assert response.status_code == 303
    cookie = response.cookies[protected.COOKIE_NAME]
    replica.http.cookies.clear()

    replica.redis.config_set("maxmemory", 1)  # full: every write refused (OOM), reads answered
    try:
        answers = {
            "public GET": replica.get(public, headers=BROWSER).status_code,
            "GET with a valid cookie": replica.get(
                tinyurl, headers={**BROWSER,
                                  "Cookie": f"{protected.COOKIE_NAME}={cookie}"}).status_code,
            "HEAD with a valid cookie": replica.get(
                tinyurl, method="HEAD",
                headers={**BROWSER,
                         "Cookie": f"{protected.COOKIE_NAME}={cookie}"}).status_code,
            "POST, the right password": post(replica, tinyurl, "open sesame").status_code,
        }
    finally:
        replica.redis.config_set("maxmemory", 0)
    assert answers == {"public GET": 302, "GET with a valid cookie": 302,
                       "HEAD with a valid cookie": 302, "POST, the right password": 503}, answers


def test_a_restored_backup_with_values_of_the_older_format_is_503_not_404(web_replica):
    """A restored backup from before keys.LINK_FORMAT: every link 503, GET as HEAD, while the
    restarted mark stands. Before the fix CLICK_SCRIPT returned nil (404) for a value without
    "|" before it looked at the mark."""
    replica = web_replica
    tinyurl = tinyurl_new()
    replica.links_ready()
    replica.redis.set(keys.link_key(tinyurl), "https://example.com/edges/format-1")
    backup = replica.snapshot_redis()  # a backup taken before the upgrade
    store(replica, tinyurl, password_hash=None, longurl="https://example.com/edges/format-2")
    replica.redis.set(keys.links_format_key(), keys.LINK_FORMAT)
    assert replica.get(tinyurl).status_code == 302

    replica.restore_redis(backup)
    answers = {"HEAD": replica.get(tinyurl, method="HEAD").status_code,
               "GET": replica.get(tinyurl).status_code}
    assert replica.redis.exists(keys.links_restarted_key())
    assert answers == {"HEAD": 503, "GET": 503}, answers


def test_readyz_is_not_200_while_every_link_is_503_after_a_restore(replica_factory):
    """/readyz on a Redis restored from an older backup (consume_links stalled, so nothing else
    runs the incarnation check) is 503 at once, as the links are. Before the fix
    (selectors.readiness_get compares the stored run id with the server's) it said 200 from
    the backup's own ready mark and heartbeat until a redirect ran the check."""
    replica = replica_factory()
    tinyurl = tinyurl_new()
    link_produce(tinyurl, 1, "https://example.com/edges/ready-old")
    wait_until(lambda: replica.readyz()[0] == 200 and replica.target(tinyurl) is not None,
               timeout=30, what="ready with the link")
    replica.click(tinyurl, 1)  # the web stores this server life's run id
    backup = replica.snapshot_redis()  # holds the ready mark (15 s life) and a fresh heartbeat
    link_produce(tinyurl, 2, "https://example.com/edges/ready-new")
    wait_until(lambda: replica.target(tinyurl) == "https://example.com/edges/ready-new",
               timeout=20, what="the newer target")
    replica.consumer.send_signal(signal.SIGSTOP)
    try:
        replica.restore_redis(backup)
        first_readyz = replica.readyz()
        get = replica.get(tinyurl)
        second_readyz = replica.readyz()
    finally:
        replica.consumer.send_signal(signal.SIGCONT)
    assert get.status_code == 503, (get.status_code, get.headers.get("Location"))
    assert second_readyz[0] == 503, second_readyz
    assert first_readyz[0] == 503, f"/readyz said {first_readyz} and then every link was 503"


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry.name))
    return out


@pytest.mark.timeout(240)
def test_no_404_from_a_ready_mark_set_after_a_stall_of_the_catch_up(replica_factory):
    """consume_links repositions (after a FLUSHALL) while its worker process is stalled
    (SIGSTOP): the main process waits on it before setting the ready mark, and beats no more.
    A link is created during the stall. Before the fix (consumer._join_then_ready beats after
    the wait and catches up again after a gap) the mark was set for the target reached
    before the stall, with a heartbeat older than the threshold, and the link made during the
    stall was answered 404."""
    stale = 10
    replica = replica_factory(start=False)
    replica.start_consumer(SHORTENER_READY_STALE_SECONDS=str(stale))
    replica.start_web()
    first = tinyurl_new()
    link_produce(first, 1, "https://example.com/edges/stall-first")
    wait_until(lambda: replica.readyz()[0] == 200 and replica.target(first) is not None,
               timeout=30, what="ready with the first link")
    workers = wait_until(lambda: _children(replica.consumer.pid), timeout=10,
                         what="consume_links' worker")
    assert len(workers) == 1, workers
    worker = workers[0]
    ready_key, heartbeat_key = keys.links_ready_key(), keys.links_heartbeat_key()

    violations: list[tuple[int, int]] = []  # (heartbeat age ms, when) while the mark stood
    not_found: list[float] = []
    done = threading.Event()

    sampling = threading.Event()

    def sample_redis() -> None:
        import redis as redis_lib
        client = redis_lib.Redis(port=replica.redis_port)
        while not done.is_set():
            sampling.set()
            with client.pipeline(transaction=False) as pipe:
                pipe.time()
                pipe.mget(ready_key, heartbeat_key)
                (seconds, micros), (ready, heartbeat) = pipe.execute()
            now = seconds * 1000 + micros // 1000
            if ready == b"1" and heartbeat is not None and now - int(heartbeat) > stale * 1000:
                violations.append((now - int(heartbeat), now))

    os.kill(worker, signal.SIGSTOP)
    try:
        log_before = len(replica.consumer_output())
        replica.redis.flushall()  # consume_links notices, repositions, reads the topic again
        wait_until(lambda: "positioned on" in replica.consumer_output()[log_before:],
                   timeout=20, what="consume_links repositioned")
        # The batch is with the stalled worker and the main process waits on it: no heartbeat.
        def heartbeat_age() -> float:
            raw = replica.redis.get(heartbeat_key)
            seconds, micros = replica.redis.time()
            return (seconds * 1000 + micros // 1000 - int(raw)) if raw else 0
        wait_until(lambda: heartbeat_age() > (stale + 1) * 1000, timeout=40,
                   what="the heartbeat older than the threshold")
        during = tinyurl_new()
        link_produce(during, 1, "https://example.com/edges/stall-during")

        def hammer() -> None:
            import requests
            session = requests.Session()
            while not done.is_set():
                response = session.get(f"{replica.url}/{during}", allow_redirects=False,
                                       timeout=10)
                if response.status_code == 404:
                    not_found.append(time.monotonic())
                elif response.status_code == 302:
                    return

        threads = [threading.Thread(target=sample_redis, daemon=True),
                   threading.Thread(target=hammer, daemon=True)]
        for thread in threads:
            thread.start()
        assert sampling.wait(10), "the sampler did not start"
    finally:
        os.kill(worker, signal.SIGCONT)
    try:
        wait_until(lambda: replica.target(during) is not None, timeout=40,
                   what="the link made during the stall, applied")
        wait_until(lambda: replica.get(during).status_code == 302, timeout=20, what="served")
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=15)
    assert not violations and not not_found, (
        f"the ready mark stood with a heartbeat older than {stale} s ({len(violations)} samples,"
        f" ages ms {[age for age, _ in violations[:5]]}); 404s for the link made during the "
        f"stall: {len(not_found)}")


@pytest.mark.timeout(300)
def test_no_404_and_no_older_target_under_redis_faults_and_load(replica_factory):
    """A small chaos run on one replica: GET and HEAD from two clients over links that all
    exist (never taken down) while the replica's Redis is wiped (FLUSHALL), restarted empty,
    restored from an older backup, while consume_links is stalled (SIGSTOP) and killed in the
    middle of a reload. Claims checked: no 404 for any of them (a replica that cannot know says
    503), and per link never a target older than one already served."""
    import random

    import requests

    replica = replica_factory(reporter=True)
    links = [tinyurl_new() for _ in range(40)]
    version: dict[str, int] = {}

    def publish(tinyurl: str, v: int) -> None:
        link_produce(tinyurl, v, f"https://example.com/m/{tinyurl}/v{v}")
        version[tinyurl] = v

    for tinyurl in links:
        publish(tinyurl, 1)
    for tinyurl in links:
        publish(tinyurl, 2)
    wait_until(lambda: replica.readyz()[0] == 200 and all(
        replica.target(t) == f"https://example.com/m/{t}/v2" for t in links),
        timeout=60, what="every link at v2")

    problems: list[str] = []
    highest: dict[str, int] = {}
    answered: dict[int, int] = {}
    done = threading.Event()
    lock = threading.Lock()

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        session = requests.Session()
        while not done.is_set():
            tinyurl = rnd.choice(links)
            method = rnd.choice(("GET", "HEAD"))
            try:
                response = session.request(method, f"{replica.url}/{tinyurl}",
                                           allow_redirects=False, timeout=10)
            except requests.RequestException as exc:
                with lock:
                    problems.append(f"{method} {tinyurl}: {exc!r}")
                continue
            with lock:
                answered[response.status_code] = answered.get(response.status_code, 0) + 1
                if response.status_code == 404:
                    problems.append(f"{method} {tinyurl}: 404 at {time.monotonic():.3f}")
                elif response.status_code == 302:
                    v = int(response.headers["Location"].rpartition("/v")[2])
                    if v < highest.get(tinyurl, 0):
                        problems.append(f"{method} {tinyurl}: v{v} after v{highest[tinyurl]}")
                    highest[tinyurl] = max(v, highest.get(tinyurl, 0))
                elif response.status_code != 503:
                    problems.append(f"{method} {tinyurl}: {response.status_code}")

    threads = [threading.Thread(target=client, args=(seed,), daemon=True) for seed in (1, 2)]
    for thread in threads:
        thread.start()

    def settled(v: int) -> None:
        wait_until(lambda: replica.readyz()[0] == 200 and all(
            replica.target(t) == f"https://example.com/m/{t}/v{version[t]}" for t in links),
            timeout=60, what=f"every link current after {v}")

    try:
        def answers_past(n: int) -> bool:
            with lock:
                return sum(answered.values()) > n
        wait_until(lambda: answers_past(100), timeout=30, what="load before the first fault")
        replica.redis.flushall()
        settled(1)
        replica.restart_redis_empty()
        settled(2)
        backup = replica.snapshot_redis()
        for tinyurl in links[:20]:
            publish(tinyurl, 3)
        settled(3)
        replica.restore_redis(backup)
        settled(4)
        replica.consumer.send_signal(signal.SIGSTOP)
        for tinyurl in links[20:]:
            publish(tinyurl, 3)
        time.sleep(16)  # a stall longer than SHORTENER_READY_STALE_SECONDS (the fault itself)
        replica.consumer.send_signal(signal.SIGCONT)
        settled(5)
        replica.restart_redis_empty()
        wait_until(lambda: replica.position() is not None, timeout=30, what="the reload begun")
        replica.stop_consumer(signal.SIGKILL)
        for tinyurl in links[:10]:
            publish(tinyurl, 4)
        replica.start_consumer()
        settled(6)
        with lock:
            so_far = sum(answered.values())
        wait_until(lambda: answers_past(so_far + 100), timeout=30, what="load after the last")
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=15)
    assert not problems, (answered, problems[:20])
