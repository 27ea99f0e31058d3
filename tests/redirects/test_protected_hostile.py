"""Password-protected links on a served replica (gunicorn with uvicorn's worker, a real
redis-server) against hostile and odd requests: forged, non-ASCII and huge cookies, unicode
passwords, bodies of the wrong type or encoding, HEAD, expired and taken-down protected links,
and the limit on wrong passwords per client (one client cannot lock out another)."""

from __future__ import annotations

import time

import pytest

from redirects import keys, protected
from tests.redirects.test_protected import (  # noqa: F401 (the fixture)
    BROWSER,
    FORM_HEADERS,
    HASH,
    TARGET,
    assert_form,
    post,
    replica,
    store,
)
from topics.passwords import password_hash_make


def raw_cookie_get(replica, tinyurl: str, cookie: bytes):
    # requests would refuse (or re-encode) a non-ASCII header value; a browser or a client
    # of its own sends any bytes it likes.
    return replica.http.get(f"{replica.url}/{tinyurl}", allow_redirects=False, timeout=10,
                            headers={**BROWSER, "Cookie": cookie})


def assert_no_traceback(replica) -> None:
    log = (replica.dir / "web.log").read_bytes()
    assert b"Traceback" not in log, log[-3000:].decode(errors="replace")


@pytest.mark.parametrize("value", [
    "²²²²²²²²²².AAAA",  # latin-1 "digits" str.isdigit() takes and int() refuses
    "9999999999.\xe9\xe9\xe9",  # a non-ASCII MAC: hmac.compare_digest raises on it
    "9999999999." + "A" * 43 + "\xff",
])
def test_a_forged_non_ascii_cookie_is_the_form_not_a_500(replica, value):
    store(replica, "Forg001")
    response = raw_cookie_get(replica, "Forg001",
                              f"{protected.COOKIE_NAME}={value}".encode("latin-1"))
    assert_form(response)
    assert replica.clicks_count("Forg001") == 0
    assert_no_traceback(replica)


def test_huge_truncated_and_repeated_cookies_are_the_form(replica):
    store(replica, "Forg002")
    good = protected.cookie_value("Forg002", HASH)
    for value in (good[:-1], good[: len(good) // 2], good.split(".")[0], "." + good,
                  good + "." + good, "9" * 13 + "." + good.split(".")[1],
                  "x" * 6000):
        assert_form(raw_cookie_get(replica, "Forg002",
                                   f"{protected.COOKIE_NAME}={value}".encode()))
    assert replica.clicks_count("Forg002") == 0
    # The right cookie among many others is found, whatever comes before it.
    crowd = "; ".join(f"c{i}=v{i}" for i in range(50))
    through = raw_cookie_get(replica, "Forg002",
                             f"{crowd}; {protected.COOKIE_NAME}={good}".encode())
    assert (through.status_code, through.headers["Location"]) == (302, TARGET)
    assert replica.clicks_count("Forg002") == 1
    assert_no_traceback(replica)


def test_a_unicode_password_given_in_the_form_lets_through(replica):
    password = "pässwörd ✓ 🔑 пароль"
    store(replica, "Uni0001", password_hash=password_hash_make(password))
    assert_form(post(replica, "Uni0001", "passwörd ✓ 🔑 пароль"), 401)
    response = post(replica, "Uni0001", password)
    assert (response.status_code, response.headers["Location"]) == (303, TARGET)
    assert replica.clicks_count("Uni0001") == 1


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/json", b'{"password": "open sesame"}'),
    ("text/plain", b"open sesame"),
    ("application/x-www-form-urlencoded", b"password=\xff\xfe\x00open"),  # not UTF-8
    ("application/x-www-form-urlencoded", b"password=%ff%fe%00"),
    ("application/x-www-form-urlencoded", b"password"),  # no "="
    ("application/x-www-form-urlencoded", b"=&&==&password"),
    ("application/x-www-form-urlencoded", b""),
    (None, b""),
])
def test_odd_bodies_are_a_wrong_password_not_a_500(replica, content_type, body):
    store(replica, "Body001")
    headers = {**BROWSER, **({"Content-Type": content_type} if content_type else {})}
    response = replica.http.post(f"{replica.url}/Body001", data=body, headers=headers,
                                 allow_redirects=False, timeout=10)
    assert_form(response, 401)
    assert replica.clicks_count("Body001") == 0
    assert_no_traceback(replica)


def test_a_password_sent_twice_and_with_other_fields(replica):
    store(replica, "Body002")
    # A form of ours sends one field; the last "password" counts, the others are ignored.
    response = replica.http.post(f"{replica.url}/Body002",
                                 data=b"x=1&password=nope&password=open+sesame&y=2",
                                 headers=FORM_HEADERS, allow_redirects=False, timeout=10)
    assert response.status_code == 303


def test_a_chunked_body_over_the_limit_is_413(replica):
    store(replica, "Body003")

    def chunks():
        for _ in range(10):
            yield b"password=" + b"x" * 1000

    response = replica.http.post(f"{replica.url}/Body003", data=chunks(), headers=FORM_HEADERS,
                                 allow_redirects=False, timeout=10)
    assert response.status_code == 413
    assert replica.clicks_count("Body003") == 0


def test_head_answers_as_get_and_counts_nothing(replica):
    # A HEAD answers what a GET of the same request answers (the form, or with a valid cookie
    # the redirect), and is never counted, as the HEAD of an unprotected link.
    store(replica, "Head001")
    store(replica, "Head002", password_hash=None)
    good = protected.cookie_value("Head001", HASH)
    outdated = protected.cookie_value("Head001", password_hash_make("an older one"))
    counted = 0  # the GETs let through
    for cookie, status in (("", 200), (f"{protected.COOKIE_NAME}={good}", 302),
                           (f"{protected.COOKIE_NAME}={outdated}", 200),
                           (f"{protected.COOKIE_NAME}=garbage", 200)):
        headers = {**BROWSER, "Cookie": cookie}
        head = replica.http.head(f"{replica.url}/Head001", allow_redirects=False, timeout=10,
                                 headers=headers)
        assert head.status_code == status, cookie
        assert head.content == b""
        assert replica.clicks_count("Head001") == counted
        get = replica.http.get(f"{replica.url}/Head001", allow_redirects=False, timeout=10,
                               headers=headers)
        assert get.status_code == status, cookie
        assert head.headers.get("Location") == get.headers.get("Location")
        assert head.headers["Cache-Control"] == get.headers["Cache-Control"] == "no-store"
        assert head.headers["Content-Type"] == get.headers["Content-Type"]
        counted += status == 302
    assert head.headers.get("Location") is None  # the last: the form
    assert replica.clicks_count("Head001") == 1  # the GET with the good cookie, only
    through = replica.http.head(f"{replica.url}/Head001", allow_redirects=False, timeout=10,
                                headers={**BROWSER, "Cookie": f"{protected.COOKIE_NAME}={good}"})
    assert (through.status_code, through.headers["Location"]) == (302, TARGET)
    # The unprotected link's HEAD, the rule kept: the redirect, not counted.
    plain = replica.get("Head002", method="HEAD", headers=BROWSER)
    assert (plain.status_code, plain.headers["Location"]) == (302, TARGET)
    assert replica.clicks_count("Head002") == 0
    assert replica.clicks_count("Head001") == 1


def test_an_expired_protected_link_is_410_and_a_taken_down_one_404(replica):
    now_ms = int(time.time() * 1000)
    replica.links_ready()  # as consume_links leaves it once caught up
    replica.redis.set(keys.link_key("Gone001"), keys.link_value_encode(keys.LinkValue(
        version=1, expires_at=now_ms - 1000, longurl=TARGET, password_hash=HASH)))
    good = protected.cookie_value("Gone001", HASH)
    for method in ("GET", "HEAD"):
        assert replica.get("Gone001", method=method, headers=BROWSER).status_code == 410
    assert raw_cookie_get(replica, "Gone001",
                          f"{protected.COOKIE_NAME}={good}".encode()).status_code == 410
    assert post(replica, "Gone001", "open sesame").status_code == 405
    # Taken down: the record carries no hash and no longurl; 404, never the form.
    store(replica, "Down001")
    cookie = protected.cookie_value("Down001", HASH)
    replica.redis.set(keys.link_key("Down001"), keys.link_value_encode(keys.LinkValue(
        version=2, expires_at=None, longurl=None, password_hash=None)))
    for method in ("GET", "HEAD"):
        assert replica.get("Down001", method=method, headers=BROWSER).status_code == 404
    assert raw_cookie_get(replica, "Down001",
                          f"{protected.COOKIE_NAME}={cookie}".encode()).status_code == 404
    assert post(replica, "Down001", "open sesame").status_code == 405
    # Put back with its hash: protected again, and the browser's cookie for that hash is good.
    store(replica, "Down001", version=3)
    assert_form(replica.get("Down001", headers=BROWSER))
    assert raw_cookie_get(replica, "Down001",
                          f"{protected.COOKIE_NAME}={cookie}".encode()).status_code == 302
    assert replica.clicks_count("Gone001") == 0 and replica.clicks_count("Down001") == 1


def test_one_client_cannot_lock_out_another(replica):
    # uvicorn takes the client's address from a trusted proxy's X-Forwarded-For (127.0.0.1 is
    # one): two clients behind the proxy.
    store(replica, "Lock001")
    attacker = {"X-Forwarded-For": "198.51.100.7"}
    victim = {"X-Forwarded-For": "2001:db8::1"}
    for _ in range(3):  # SHORTENER_PASSWORD_TRIES=3
        assert post(replica, "Lock001", "guess", **attacker).status_code == 401
    for _ in range(3):
        assert post(replica, "Lock001", "guess", **attacker).status_code == 429
    assert post(replica, "Lock001", "open sesame", **victim).status_code == 303
    # The victim's right password clears the victim's count only; past the limit the right
    # password is not even checked, so it clears nothing: the attacker's window stays.
    assert post(replica, "Lock001", "open sesame", **attacker).status_code == 429
    assert replica.clicks_count("Lock001") == 1
    # 429 checks nothing: the count grows, the window does not (set on the first only).
    failures = keys.password_failures_key(tinyurl="Lock001", client="198.51.100.7")
    assert int(replica.redis.get(failures)) == 7
    assert 0 < replica.redis.ttl(failures) <= 60


def test_the_longest_password_the_master_accepts_fits_the_forms_maxlength(replica):
    import re

    from topics.passwords import PASSWORD_MAX_LENGTH

    # 128 code points of emoji: accepted by the API; 256 UTF-16 code units, which is what a
    # browser's maxlength counts (HTML: "length" of a value is in code units).
    password = "🔑" * PASSWORD_MAX_LENGTH
    store(replica, "Long001", password_hash=password_hash_make(password))
    form = replica.get("Long001", headers=BROWSER)
    maxlength = int(re.search(rb'maxlength="(\d+)"', form.content).group(1))
    assert maxlength >= len(password.encode("utf-16-le")) // 2
    assert post(replica, "Long001", password).status_code == 303


def test_a_window_ending_during_the_check_leaves_no_everlasting_count(replica):
    # The right password's attempt is counted (INCR), then the count cleared after scrypt's
    # 0.18 s; if the window's key expires in between, the clearing must not make a new key
    # without expiry (a DECR did: -1 for ever, and a free extra try). The key's expiry is played
    # here by deleting it once the attempt is counted and before the answer.
    import threading

    store(replica, "Race001")
    failures = keys.password_failures_key(tinyurl="Race001", client="127.0.0.1")
    for _ in range(20):
        replica.redis.delete(failures)
        answers = []
        sender = threading.Thread(target=lambda: answers.append(
            post(replica, "Race001", "open sesame")))
        sender.start()
        while not answers and replica.redis.get(failures) != b"1":
            pass
        deleted = not answers and replica.redis.delete(failures) == 1
        sender.join()
        assert answers[0].status_code == 303
        if deleted and answers:
            break
    else:
        pytest.fail("never deleted the count between the attempt and the answer")
    assert replica.redis.get(failures) is None or replica.redis.ttl(failures) > 0


def test_a_slow_form_body_is_408_and_counts_no_attempt(replica_factory, settings):
    # runtime/serving.py runs the application only once the body has arrived whole: a body
    # trickled past SHORTENER_REQUEST_TIMEOUT never reaches the password check.
    import socket
    from urllib.parse import urlsplit

    slow = replica_factory(start=False)
    slow.env.update(SHORTENER_REQUEST_TIMEOUT="2")
    slow.start_web()
    store(slow, "Slow001")
    where = urlsplit(slow.url)
    with socket.create_connection((where.hostname, where.port), timeout=30) as conn:
        conn.sendall(b"POST /Slow001 HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 40\r\n\r\npassword=op")
        answer = b""
        while chunk := conn.recv(4096):  # until the server closes (bounded by the timeout)
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert not slow.redis.exists(keys.password_failures_key(tinyurl="Slow001",
                                                            client="127.0.0.1"))
    assert slow.clicks_count("Slow001") == 0
