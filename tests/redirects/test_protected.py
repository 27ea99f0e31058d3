"""Password-protected links on a replica as deployed (gunicorn with uvicorn's worker, a real
redis-server): the form, the password check, the cookie, the limit on wrong passwords, and what
counts as a click. Links are written into the replica's Redis in the form consume_links writes
(keys.LinkValue with its password hash); tests/links/test_passwords.py goes through the master."""

from __future__ import annotations

import time

import pytest
from django.conf import settings

from redirects import keys, protected
from topics.passwords import password_hash_make

SECRET = "test-cookie-secret"
TARGET = "https://example.com/secret/page?x=1"
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"}
FORM_HEADERS = {**BROWSER, "Content-Type": "application/x-www-form-urlencoded"}

HASH = password_hash_make("open sesame")


@pytest.fixture
def replica(replica_factory, settings):
    settings.SHORTENER_LINK_COOKIE_SECRET = SECRET  # this process makes and checks cookies too
    replica = replica_factory(start=False)
    replica.env.update(SHORTENER_LINK_COOKIE_SECRET=SECRET, SHORTENER_PASSWORD_TRIES="3")
    replica.start_web()
    return replica


def store(replica, tinyurl: str, *, password_hash: str | None = HASH, version: int = 1) -> None:
    replica.links_ready()  # as consume_links leaves it once caught up
    replica.redis.set(keys.link_key(tinyurl), keys.link_value_encode(keys.LinkValue(
        version=version, expires_at=None, longurl=TARGET, password_hash=password_hash)))


def post(replica, tinyurl: str, password: str, **headers: str):
    return replica.http.post(f"{replica.url}/{tinyurl}", data={"password": password},
                             headers={**FORM_HEADERS, **headers}, allow_redirects=False,
                             timeout=10)


def with_cookie(replica, tinyurl: str, value: str):
    return replica.http.get(f"{replica.url}/{tinyurl}", allow_redirects=False, timeout=10,
                            headers={**BROWSER, "Cookie": f"{protected.COOKIE_NAME}={value}"})


def assert_form(response, status: int = 200) -> None:
    assert response.status_code == status
    assert "location" not in response.headers
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    assert b'<form method="post">' in response.content
    assert b'type="password" name="password"' in response.content
    assert b"<script" not in response.content
    assert TARGET.encode() not in response.content


def test_a_protected_link_answers_the_form_and_counts_nothing(replica):
    store(replica, "Prot001")
    for method in ("GET", "HEAD"):
        response = replica.get("Prot001", method=method, headers=BROWSER)
        assert response.status_code == 200 and "location" not in response.headers, method
    assert_form(replica.get("Prot001", headers=BROWSER))
    assert replica.clicks_count("Prot001") == 0
    assert not replica.redis.exists(keys.clicks_dirty_key())


def test_the_right_password_redirects_sets_the_cookie_and_counts_once(replica):
    store(replica, "Prot002")
    response = post(replica, "Prot002", "open sesame")
    assert response.status_code == 303
    assert response.headers["Location"] == TARGET
    cookie = response.headers["Set-Cookie"]
    attributes = {a.strip().split("=")[0] for a in cookie.split(";")}
    assert {"HttpOnly", "SameSite", "Path", "Max-Age"} <= attributes
    assert "Path=/Prot002" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in attributes  # plain http
    assert replica.clicks_count("Prot002") == 1
    # The browser's cookie lets it through: a redirect, counted.
    value = response.cookies[protected.COOKIE_NAME]
    again = with_cookie(replica, "Prot002", value)
    assert (again.status_code, again.headers["Location"]) == (302, TARGET)
    assert replica.clicks_count("Prot002") == 2
    # The cookie is this link's only: another protected link still asks.
    store(replica, "Prot003")
    assert_form(with_cookie(replica, "Prot003", value))
    assert replica.clicks_count("Prot003") == 0


def test_the_cookie_is_secure_over_https(replica):
    store(replica, "Prot004")
    # uvicorn takes the scheme from a trusted proxy's X-Forwarded-Proto (127.0.0.1 is one).
    response = post(replica, "Prot004", "open sesame", **{"X-Forwarded-Proto": "https"})
    assert response.status_code == 303
    assert "Secure" in [a.strip() for a in response.headers["Set-Cookie"].split(";")]


def test_tampered_expired_and_outdated_cookies_are_refused(replica):
    store(replica, "Prot005")
    good = protected.cookie_value("Prot005", HASH)
    expires, _, mac = good.partition(".")
    refused = [
        f"{int(expires) + 3600}.{mac}",  # prolonged: the expiry is in the MAC
        f"{expires}.{mac[:-2]}AA",  # another MAC
        protected.cookie_value("Prot005", HASH, now=time.time() - 13 * 3600),  # expired
        protected.cookie_value("Prot006", HASH),  # another link's
        "garbage", "",
    ]
    for value in refused:
        assert_form(with_cookie(replica, "Prot005", value))
    assert replica.clicks_count("Prot005") == 0
    assert with_cookie(replica, "Prot005", good).status_code == 302
    # A new password (a new hash, a newer version) ends the cookies given for the old one.
    store(replica, "Prot005", password_hash=password_hash_make("another"), version=2)
    assert_form(with_cookie(replica, "Prot005", good))
    assert replica.clicks_count("Prot005") == 1


def test_wrong_passwords_are_401_then_limited_per_link_and_client(replica):
    store(replica, "Prot007")
    store(replica, "Prot008")
    for _ in range(3):  # SHORTENER_PASSWORD_TRIES=3
        wrong = post(replica, "Prot007", "guess")
        assert_form(wrong, 401)
        assert b"Wrong password" in wrong.content
    limited = post(replica, "Prot007", "open sesame")  # even the right one, past the limit
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert "location" not in limited.headers
    assert replica.clicks_count("Prot007") == 0
    # Counted per (link, client address): another link from this client is not limited.
    assert post(replica, "Prot008", "open sesame").status_code == 303
    failures = keys.password_failures_key(tinyurl="Prot007", client="127.0.0.1")
    assert 0 < replica.redis.ttl(failures) <= 60
    # The window's end lifts the limit (its key expires: here, ended at once).
    replica.redis.delete(failures)
    assert post(replica, "Prot007", "open sesame").status_code == 303


def test_the_right_password_is_not_a_failure(replica):
    store(replica, "Prot009")
    for _ in range(5):  # more than the 3 tries: the right password never uses one up
        assert post(replica, "Prot009", "open sesame").status_code == 303
    assert replica.clicks_count("Prot009") == 5


def test_the_right_password_clears_the_earlier_failures(replica):
    store(replica, "Prot013")
    store(replica, "Prot014")
    failures = keys.password_failures_key(tinyurl="Prot013", client="127.0.0.1")
    for _ in range(2):  # of SHORTENER_PASSWORD_TRIES=3
        assert post(replica, "Prot013", "guess").status_code == 401
    assert post(replica, "Prot014", "guess").status_code == 401  # another link's count
    assert int(replica.redis.get(failures)) == 2
    assert post(replica, "Prot013", "open sesame").status_code == 303
    assert not replica.redis.exists(failures)
    # Three tries again, not one: the mistakes before the right password are forgotten.
    for _ in range(3):
        assert post(replica, "Prot013", "guess").status_code == 401
    assert post(replica, "Prot013", "guess").status_code == 429
    # This link's right password cleared this link's count only, and under the user's prefix.
    other = keys.password_failures_key(tinyurl="Prot014", client="127.0.0.1")
    assert other.startswith(f"{settings.SHORTENER_USER}:") and int(replica.redis.get(other)) == 1
    assert 0 < replica.redis.ttl(other) <= 60


def test_unprotected_and_unknown_links_are_unchanged(replica):
    store(replica, "Open001", password_hash=None)
    response = replica.get("Open001", headers=BROWSER)
    assert (response.status_code, response.headers["Location"]) == (302, TARGET)
    assert "set-cookie" not in response.headers
    assert replica.clicks_count("Open001") == 1
    assert post(replica, "Open001", "x").status_code == 405
    assert post(replica, "Nope123", "x").status_code == 405
    assert replica.clicks_count("Open001") == 1


def test_an_oversized_form_is_refused(replica):
    store(replica, "Prot010")
    response = post(replica, "Prot010", "x" * 10_000)
    assert response.status_code == 413
    assert replica.clicks_count("Prot010") == 0


def test_no_password_in_the_replicas_redis_or_log(replica):
    store(replica, "Prot011")
    post(replica, "Prot011", "wrong-guess-xyz")
    post(replica, "Prot011", "open sesame")
    for key in replica.redis.scan_iter():
        if replica.redis.type(key) == b"string":
            value = replica.redis.get(key) or b""
            assert b"open sesame" not in value and b"wrong-guess-xyz" not in value, key
    log = (replica.dir / "web.log").read_bytes()
    assert b"open sesame" not in log and b"wrong-guess-xyz" not in log


def test_records_with_and_without_a_hash_decode_and_a_bad_hash_is_refused():
    from datetime import datetime, timezone

    from topics.links import link_record_decode, link_record_encode
    from topics.records import MessageError

    made = datetime(2026, 1, 1, tzinfo=timezone.utc)
    key, old = link_record_encode(tinyurl="Rec0001", version=1, longurl=TARGET, created_at=made)
    assert b"password_hash" not in old.replace(b'"password_hash":null', b"")
    assert link_record_decode(key, old).password_hash is None
    # A record of a master before the field (no key at all) still decodes.
    legacy = old.replace(b',"password_hash":null', b"")
    assert b"password_hash" not in legacy and link_record_decode(key, legacy).password_hash is None
    key, value = link_record_encode(tinyurl="Rec0001", version=2, longurl=TARGET, created_at=made,
                                    password_hash=HASH)
    assert link_record_decode(key, value).password_hash == HASH
    # A takedown carries no hash, whatever the link keeps.
    _, down = link_record_encode(tinyurl="Rec0001", version=3, longurl=None, created_at=made,
                                 disabled=True, password_hash=HASH)
    assert link_record_decode(key, down).password_hash is None
    for bad in (HASH.replace("$14$", "$18$", 1),  # past the bounds a replica accepts
                HASH.replace("scrypt$", "bcrypt$"), "plain text password", HASH + "|x"):
        forged = value.replace(HASH.encode(), bad.encode())
        with pytest.raises(MessageError) as refused:
            link_record_decode(key, forged)
        assert refused.value.reason == "range", bad


def test_a_form_with_too_many_fields_is_a_wrong_password(replica):
    store(replica, "Prot012")
    data = "&".join(f"f{i}=x" for i in range(20)) + "&password=open+sesame"
    response = replica.http.post(f"{replica.url}/Prot012", data=data, headers=FORM_HEADERS,
                                 allow_redirects=False, timeout=10)
    assert response.status_code == 401
