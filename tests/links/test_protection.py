"""Abuse protection of /create: the host blocklist (every equivalent spelling; the admin's
takedown of existing links), API keys on and off, rate limits on and off (also across gunicorn
workers), and the migration that puts existing longurls into their stored form."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import uuid

import pytest
import requests
from django.apps import apps
from django.conf import settings
from django.test import RequestFactory, override_settings
from kafka import KafkaConsumer, TopicPartition

from links import protection, ratelimit, services
from links.models import ApiKey, BlockedHost, Link
from links.selectors import longurl_digest
from testkit import MasterWeb, free_port, wait_until
from topics.links import links_topic

# --- the host blocklist -----------------------------------------------------------------------

BLOCKED_SPELLINGS = [
    "https://evil.example/", "https://EVIL.Example/login", "https://evil.example./x",
    "https://evil.example:443/", "https://evil.example:8443/", "http://www.evil.example/",
    "https://a.b.EVIL.example./deep?q=1", "https://ｅｖｉｌ.example/",  # full-width letters
    "https://bücher.example/", "https://BÜCHER.example/", "https://xn--bcher-kva.example/",
    "https://shop.XN--BCHER-KVA.example.:8080/", "https://shop.bücher.example/",
]
NOT_BLOCKED = ["https://notevil.example/", "https://evil.example.org/", "https://example/",
               "https://bucher.example/"]


@pytest.fixture
def blocklist(transactional_db):
    protection.blocked_host_add(host="EVIL.example.", reason="phishing")
    protection.blocked_host_add(host="https://Bücher.Example:443/path")  # any spelling
    yield
    protection.blocklist_cache_clear()


def test_blocked_hosts_are_stored_in_one_form(blocklist):
    assert sorted(BlockedHost.objects.values_list("host", flat=True)) == [
        "evil.example", "xn--bcher-kva.example"]
    protection.blocked_host_add(host="evil.example")  # the same host again: no second row
    assert BlockedHost.objects.count() == 2


@pytest.mark.parametrize("longurl", BLOCKED_SPELLINGS)
def test_every_spelling_of_a_blocked_host_and_its_subdomains_is_refused(master, blocklist,
                                                                        longurl):
    response = master.put({"longurl": longurl})
    assert response.status_code == 400, response.text
    assert "blocked by the operators" in response.json()["error"]
    assert not Link.objects.exists()


@pytest.mark.parametrize("longurl", NOT_BLOCKED)
def test_hosts_that_only_look_alike_are_not_blocked(blocklist, longurl):
    from links.validation import longurl_check

    assert longurl_check(longurl)  # not refused as blocked_host


def test_the_blocklist_cache_is_per_process_with_a_short_ttl(transactional_db):
    protection.blocklist_cache_clear()
    assert protection.host_blocked("evil.example") is None
    BlockedHost.objects.create(host="evil.example")  # as another process would
    with override_settings(SHORTENER_BLOCKLIST_CACHE_SECONDS=3600):
        assert protection.host_blocked("evil.example") is None  # this process's copy
    with override_settings(SHORTENER_BLOCKLIST_CACHE_SECONDS=0):
        assert protection.host_blocked("www.evil.example") == "evil.example"  # reloaded
    protection.blocklist_cache_clear()


def test_the_admin_normalizes_what_it_is_given(admin_client):
    response = admin_client.post("/admin/links/blockedhost/add/",
                                 {"host": "https://Shop.Bücher.Example.:443/x", "reason": "spam"})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert BlockedHost.objects.get().host == "shop.xn--bcher-kva.example"
    response = admin_client.post("/admin/links/blockedhost/add/", {"host": "not a host!"})
    assert response.status_code == 200
    assert "not a valid host" in response.content.decode()
    assert BlockedHost.objects.count() == 1
    protection.blocklist_cache_clear()


def test_the_admin_pages_of_the_blocklist_and_keys_render(admin_client):
    protection.blocked_host_add(host="bücher.example", reason="spam")
    key, _ = protection.api_key_create(name="homework")
    page = admin_client.get("/admin/links/blockedhost/").content.decode()
    assert "xn--bcher-kva.example" in page and "bücher.example" in page
    page = admin_client.get("/admin/links/apikey/").content.decode()
    assert "homework" in page and key.prefix in page
    for url in ("/admin/links/blockedhost/add/", "/admin/links/apikey/add/",
                f"/admin/links/apikey/{key.pk}/change/"):
        assert admin_client.get(url).status_code == 200, url
    protection.blocklist_cache_clear()


def _links_topic_states(tinyurls: set[str]) -> dict[str, str]:
    """The newest state on the links topic of each of `tinyurls`."""
    consumer = KafkaConsumer(bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
                             enable_auto_commit=False, consumer_timeout_ms=2000)
    tp = TopicPartition(links_topic(), 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    states: dict[str, str] = {}
    try:
        for record in consumer:
            key = record.key.decode()
            if key in tinyurls and record.value is not None:
                states[key] = json.loads(record.value)["state"]
    finally:
        consumer.close()
    return states


def test_the_admin_takes_down_every_link_to_blocked_hosts(admin_client, transactional_db):
    """Needs the publishing side of record schema 2: a takedown is a "disabled" record."""
    def create(longurl: str) -> Link:
        return services.link_create(longurl=longurl).link

    evil = [create("https://evil.example/a"), create("https://WWW.evil.example:8443/b"),
            create("https://bücher.example/c")]
    kept = [create("https://evil.example.org/d"), create("https://other.example/e")]
    # Links stored before longurls had one definition, in forms /create now refuses.
    legacy = []
    for longurl in ("https://bank.example@evil.example/", "https://shop.bücher.example/ü"):
        legacy.append(Link.objects.create(tinyurl=services.tinyurl_generate(), longurl=longurl,
                                          longurl_sha256=longurl_digest(longurl)))
    admin_client.post("/admin/links/blockedhost/add/", {"host": "evil.example"})
    admin_client.post("/admin/links/blockedhost/add/", {"host": "xn--bcher-kva.example"})

    response = admin_client.post("/admin/links/blockedhost/", {
        "action": "take_down_links",
        "_selected_action": list(BlockedHost.objects.values_list("pk", flat=True))}, follow=True)
    assert "5 link(s) taken down on every replica" in response.content.decode()
    for link in evil + legacy:
        link.refresh_from_db()
        assert link.disabled_at is not None and link.published_at is not None, link.longurl
    for link in kept:
        link.refresh_from_db()
        assert link.disabled_at is None
    # Every replica learns it from the links topic: a "disabled" record, the newest for each.
    down = {link.tinyurl for link in evil + legacy}
    wait_until(lambda: _links_topic_states(down) == dict.fromkeys(down, "disabled"),
               timeout=20, what="disabled records on the links topic")
    protection.blocklist_cache_clear()


# --- API keys ---------------------------------------------------------------------------------


def _put(master, longurl: str, token: str | None = None, scheme: str = "Bearer"):
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    return master.put({"longurl": longurl}, headers=headers)


def test_keys_are_stored_hashed_and_shown_once_in_the_admin(admin_client):
    response = admin_client.post("/admin/links/apikey/add/", {"name": "homework"})
    assert response.status_code == 200
    token = re.search(r'id="api-key-token"[^>]*>(sk_[A-Za-z0-9_-]{43})<', response.content.decode())
    assert token, response.content.decode()[:3000]
    token = token.group(1)
    key = ApiKey.objects.get()
    assert bytes(key.digest) == hashlib.sha256(token.encode()).digest()
    assert key.prefix == token[:10] and key.revoked_at is None
    # The change page shows no token.
    page = admin_client.get(f"/admin/links/apikey/{key.pk}/change/").content.decode()
    assert token not in page and key.prefix in page

    admin_client.post("/admin/links/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_open_mode_needs_no_key_but_checks_one_that_is_sent(master, transactional_db):
    _, token = protection.api_key_create(name="client")
    revoked, revoked_token = protection.api_key_create(name="old")
    protection.api_key_revoke(key=revoked)
    assert _put(master, "https://example.org/open").status_code == 200
    assert _put(master, "https://example.org/with-key", token).status_code == 200
    assert _put(master, "https://example.org/x", revoked_token).status_code == 403
    assert _put(master, "https://example.org/x", "sk_unknown").status_code == 403
    assert _put(master, "https://example.org/x", "user:pw", scheme="Basic").status_code == 401


@override_settings(SHORTENER_CREATE_AUTH="key")
def test_key_mode_needs_a_valid_key(master, transactional_db):
    key, token = protection.api_key_create(name="client")
    missing = _put(master, "https://example.org/x")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in missing.json()["error"]
    assert _put(master, "https://example.org/x", "").status_code == 401
    unknown = _put(master, "https://example.org/x", "sk_" + "x" * 43)
    assert unknown.status_code == 403 and "unknown" in unknown.json()["error"]
    ok = _put(master, "https://example.org/keyed", token)
    assert ok.status_code == 200, ok.text
    assert _put(master, "https://example.org/keyed", token, scheme="bearer").status_code == 200
    protection.api_key_revoke(key=key)
    revoked = _put(master, "https://example.org/keyed", token)
    assert revoked.status_code == 403 and "revoked" in revoked.json()["error"]
    assert Link.objects.count() == 1


# --- rate limits ------------------------------------------------------------------------------


@override_settings(SHORTENER_CREATE_RATE_LIMIT="3/minute")
def test_a_client_over_its_limit_gets_429_with_retry_after(master, transactional_db):
    answers = [master.put({"longurl": f"https://example.org/{i}"}) for i in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    limited = master.put({"longurl": "https://example.org/3"})
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert "too many" in limited.json()["error"]
    assert master.put(b"not even json").status_code == 429  # every request counts
    # Another client (here: a key) has its own budget.
    _, token = protection.api_key_create(name="other")
    assert _put(master, "https://example.org/3", token).status_code == 200
    assert Link.objects.count() == 4


@override_settings(SHORTENER_CREATE_RATE_LIMIT="")
def test_no_limit_when_the_setting_is_empty(master, transactional_db):
    answers = [master.put({"longurl": "https://example.org/same"}) for _ in range(30)]
    assert {a.status_code for a in answers} == {200}


def test_the_limit_is_shared_by_every_gunicorn_worker(transactional_db, test_data_dir,
                                                      monkeypatch):
    monkeypatch.setenv("SHORTENER_CREATE_RATE_LIMIT", "5/minute")
    web = MasterWeb(test_data_dir, workers=3)
    try:
        statuses = []
        for i in range(12):
            # A new connection each time, so that requests spread over the workers.
            statuses.append(requests.put(f"{web.url}/create", timeout=30,
                                         data=b'{"longurl": "ftp://refused.example/"}').status_code)
        assert statuses.count(400) == 5 and statuses.count(429) == 7, statuses
    finally:
        web.close()


def test_a_redis_store_works_too(master, transactional_db):
    with override_settings(SHORTENER_CREATE_RATE_LIMIT="2/minute",
                           SHORTENER_RATE_LIMIT_STORAGE=settings.REDIS_URL):
        statuses = [master.put({"longurl": "ftp://refused.example/"}).status_code
                    for _ in range(3)]
    assert statuses == [400, 400, 429]


def test_a_store_that_fails_lets_requests_through(master, transactional_db):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with override_settings(SHORTENER_CREATE_RATE_LIMIT="1/minute",
                           SHORTENER_RATE_LIMIT_STORAGE=dead):
        statuses = [master.put({"longurl": "ftp://refused.example/"}).status_code
                    for _ in range(3)]
    assert statuses == [400, 400, 400]


def test_the_database_store_counts_and_expires(transactional_db):
    store = ratelimit.DatabaseStorage()
    key = f"test/{uuid.uuid4().hex}"
    assert [store.incr(key, 1), store.incr(key, 1), store.incr(key, 1, amount=3)] == [1, 2, 5]
    assert store.get(key) == 5
    assert store.get_expiry(key) > 0
    wait_until(lambda: store.get(key) == 0, timeout=5, what="the window to end")
    assert store.incr(key, 60) == 1  # a new window
    store.clear(key)
    assert store.get(key) == 0
    assert store.check()


@pytest.mark.parametrize("meta,proxies,client", [
    ({"REMOTE_ADDR": "203.0.113.7"}, 0, "addr:203.0.113.7"),
    ({"REMOTE_ADDR": "2001:db8:1:2:aaaa::1"}, 0, "net:2001:db8:1:2::/64"),
    ({"REMOTE_ADDR": "2001:db8:1:2:bbbb::9"}, 0, "net:2001:db8:1:2::/64"),
    ({"REMOTE_ADDR": "::ffff:203.0.113.7"}, 0, "addr:203.0.113.7"),
    # X-Forwarded-For is the client's to write: ignored unless proxies are trusted...
    ({"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "198.51.100.1"}, 0, "addr:10.0.0.1"),
    # ...and then only the entry the outermost trusted proxy added counts.
    ({"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 198.51.100.1"}, 1,
     "addr:198.51.100.1"),
    ({"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 198.51.100.1, 10.0.0.2"}, 2,
     "addr:198.51.100.1"),
])
def test_the_client_of_a_request(meta, proxies, client):
    request = RequestFactory().put("/create", **meta)
    with override_settings(SHORTENER_TRUSTED_PROXIES=proxies):
        assert protection.client_identity(request=request, key=None) == client


# --- existing links ---------------------------------------------------------------------------


def test_the_migration_puts_existing_longurls_in_their_stored_form(transactional_db):
    migration = importlib.import_module("links.migrations.0006_protection")

    def insert(longurl: str) -> Link:
        return Link.objects.create(tinyurl=services.tinyurl_generate(), longurl=longurl,
                                   longurl_sha256=longurl_digest(longurl),
                                   published_at="2026-01-01T00:00:00Z")

    idn = insert("https://bücher.example/ü?q=ä")
    fine = insert("https://example.org/fine")
    phishing = insert("https://bank.example@evil.example/")  # cannot be served: left
    insert("https://xn--bcher-kva.example/twin")
    twin = insert("https://bücher.example/twin")  # its stored form is already another link's
    migration.longurls_to_stored_form(apps, None)

    idn.refresh_from_db()
    assert idn.longurl == "https://xn--bcher-kva.example/%C3%BC?q=%C3%A4"
    assert bytes(idn.longurl_sha256) == longurl_digest(idn.longurl)
    assert idn.state_version == 2 and idn.published_at is None  # the outbox re-sends it
    for link in (fine, phishing, twin):
        before = link.longurl
        link.refresh_from_db()
        assert link.longurl == before and link.state_version == 1
        assert link.published_at is not None
