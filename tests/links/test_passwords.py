"""Password-protected links through the master (links/passwords.py, links.services) on real
PostgreSQL and Kafka, and end to end with a replica (consume_links, its web server, its
reporter) and the master's consume_clicks: only the hash is stored and published, the replica
answers the form, the right password redirects, and only a visit that reaches the target is a
click in the master's total."""

from __future__ import annotations

import logging

import pytest

from links import passwords, services
from links.models import Link
from redirects import protected
from testkit import link_records, wait_until
from topics.links import links_topic
from topics.passwords import password_check

PASSWORD = "correct horse battery staple"
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"}


def records(tinyurl: str) -> list:
    return link_records(links_topic(), tinyurl)


def test_only_the_hash_is_stored_and_published(transactional_db, kafka_topics, caplog):
    caplog.set_level(logging.DEBUG)
    made = services.link_create(longurl="https://example.com/pw/one", alias="pw-one",
                                password=PASSWORD)
    link = Link.objects.get(tinyurl="pw-one")
    assert made.created and link.password_hash and password_check(PASSWORD, link.password_hash)
    published = records("pw-one")
    assert published[-1].password_hash == link.password_hash
    raw = b"".join(bytes(r) if isinstance(r, bytes) else repr(r).encode() for r in published)
    assert PASSWORD.encode() not in raw
    assert PASSWORD not in caplog.text
    # A generated tinyurl takes a password too.
    generated = services.link_create(longurl="https://example.com/pw/two", password=PASSWORD)
    assert generated.created and generated.link.password_hash
    assert records(generated.link.tinyurl)[-1].password_hash == generated.link.password_hash


def test_a_password_is_set_changed_and_removed_by_link_update(transactional_db, kafka_topics):
    link = services.link_create(longurl="https://example.com/pw/update").link
    assert link.password_hash is None and records(link.tinyurl)[-1].password_hash is None
    services.link_update(link=link, password="first one")
    first = Link.objects.get(pk=link.pk)
    assert password_check("first one", first.password_hash)
    assert records(link.tinyurl)[-1].password_hash == first.password_hash
    services.link_update(link=link, password=None)  # None: left as it is
    assert Link.objects.get(pk=link.pk).state_version == first.state_version
    services.link_update(link=link, password="second one")
    second = Link.objects.get(pk=link.pk)
    assert second.state_version == first.state_version + 1
    assert password_check("second one", second.password_hash)
    services.link_update(link=link, password="")  # "": removed
    removed = Link.objects.get(pk=link.pk)
    assert removed.password_hash is None and records(link.tinyurl)[-1].password_hash is None
    # A taken-down link's record carries no hash; put back, it is protected again.
    services.link_update(link=link, password="third one")
    services.link_update(link=link, disabled=True)
    assert records(link.tinyurl)[-1].password_hash is None
    services.link_update(link=link, disabled=False)
    assert records(link.tinyurl)[-1].password_hash == Link.objects.get(pk=link.pk).password_hash


@pytest.mark.parametrize("bad", ["", "x" * 129, 12345, ["a"], "nul\x00here", "lone \ud800"])
def test_an_unusable_password_is_refused_and_nothing_written(transactional_db, kafka_topics, bad):
    outcome = services.links_create_many([services.CreateItem(
        longurl="https://example.com/pw/bad", password=bad)])[0]
    assert isinstance(outcome, passwords.PasswordInvalid) and outcome.status == 400
    assert not Link.objects.filter(longurl="https://example.com/pw/bad").exists()
    link = services.link_create(longurl="https://example.com/pw/bad-update").link
    if bad != "":  # "" on an update removes the password
        with pytest.raises(passwords.PasswordInvalid):
            services.link_update(link=link, password=bad)


def test_a_password_applies_only_to_a_link_the_call_makes(transactional_db, kafka_topics):
    longurl = "https://example.com/pw/shared"
    plain = services.link_create(longurl=longurl).link
    conflict = services.links_create_many([services.CreateItem(longurl=longurl,
                                                               password=PASSWORD)])[0]
    assert isinstance(conflict, passwords.PasswordConflict) and conflict.status == 409
    assert Link.objects.get(pk=plain.pk).password_hash is None
    # A retry with the same password gets its link; another password is a conflict.
    made = services.link_create(longurl=longurl, alias="pw-shared", password=PASSWORD)
    again = services.link_create(longurl=longurl, alias="pw-shared", password=PASSWORD)
    assert made.created and (again.created, again.link.pk) == (False, made.link.pk)
    with pytest.raises(passwords.PasswordConflict):
        services.link_create(longurl=longurl, alias="pw-shared", password="another")
    # In one call: the first item makes the link; a later one with another password conflicts.
    first, same, other = services.links_create_many([
        services.CreateItem(longurl="https://example.com/pw/batch", password=PASSWORD),
        services.CreateItem(longurl="https://example.com/pw/batch", password=PASSWORD),
        services.CreateItem(longurl="https://example.com/pw/batch", password="another")])
    assert first.created and same.link.pk == first.link.pk
    assert isinstance(other, passwords.PasswordConflict)


def test_a_protected_link_end_to_end_counts_only_visits_that_reach_the_target(
    transactional_db, kafka_topics, replica_factory, clicks_consumer, settings
):
    settings.SHORTENER_LINK_COOKIE_SECRET = "e2e-secret"
    replica = replica_factory(start=False, reporter=True)
    replica.env["SHORTENER_LINK_COOKIE_SECRET"] = "e2e-secret"
    replica.start_consumer()
    replica.start_web()
    link = services.link_create(longurl="https://example.com/pw/e2e", password=PASSWORD).link
    code = link.tinyurl
    wait_until(lambda: replica.link_hash(code) is not None, timeout=30, what="the link's hash")
    assert replica.link_hash(code) == link.password_hash
    for _ in range(3):
        form = replica.get(code, headers=BROWSER)
        assert form.status_code == 200 and b'name="password"' in form.content
    wrong = replica.http.post(f"{replica.url}/{code}", data={"password": "nope"},
                              headers=BROWSER, allow_redirects=False, timeout=30)
    assert wrong.status_code == 401
    right = replica.http.post(f"{replica.url}/{code}", data={"password": PASSWORD},
                              headers=BROWSER, allow_redirects=False, timeout=30)
    assert (right.status_code, right.headers["Location"]) == (303, "https://example.com/pw/e2e")
    cookie = right.cookies[protected.COOKIE_NAME]
    through = replica.http.get(f"{replica.url}/{code}", allow_redirects=False, timeout=30,
                               headers={**BROWSER, "Cookie": f"{protected.COOKIE_NAME}={cookie}"})
    assert through.status_code == 302
    assert replica.clicks_count(code) == 2  # the form's three GETs and the 401 count nothing
    assert replica.stop_reporter() == 0
    wait_until(lambda: Link.objects.get(pk=link.pk).clicks == 2, timeout=30,
               what="two clicks in the master's total")
    # The password removed: the link redirects at once, like any other.
    services.link_update(link=link, password="")
    wait_until(lambda: replica.link_hash(code) is None, timeout=30, what="the hash removed")
    assert replica.get(code, headers=BROWSER).status_code == 302
    for log in replica.dir.glob("*.log"):
        assert PASSWORD.encode() not in log.read_bytes(), log


def test_the_admin_shows_sets_and_removes_a_password_and_never_logs_it(transactional_db,
                                                                       kafka_topics, admin_client):
    from django.contrib.admin.models import LogEntry

    link = services.link_create(longurl="https://example.com/pw/admin").link
    url = f"/admin/links/link/{link.pk}/change/"
    page = admin_client.get(url).content.decode()
    assert 'name="password"' in page and 'name="password_remove"' in page
    form = {"longurl": link.longurl, "expires_at_0": "", "expires_at_1": "",
            "click_counters-TOTAL_FORMS": "0", "click_counters-INITIAL_FORMS": "0"}
    response = admin_client.post(url, {**form, "password": "admin secret"})
    assert response.status_code == 302, response.context["errors"]
    changed = Link.objects.get(pk=link.pk)
    assert password_check("admin secret", changed.password_hash)
    assert records(link.tinyurl)[-1].password_hash == changed.password_hash
    page = admin_client.get(url).content.decode()
    assert "admin secret" not in page and changed.password_hash not in page
    listed = admin_client.get("/admin/links/link/", {"q": link.tinyurl}).content.decode()
    assert "Password" in listed  # the column
    # Both at once is refused; the checkbox removes it.
    both = admin_client.post(url, {**form, "password": "x", "password_remove": "on"})
    assert both.status_code == 200 and Link.objects.get(pk=link.pk).password_hash
    assert admin_client.post(url, {**form, "password_remove": "on"}).status_code == 302
    assert Link.objects.get(pk=link.pk).password_hash is None
    # The add form takes a password for the new link.
    added = admin_client.post("/admin/links/link/add/", {
        "longurl": "https://example.com/pw/admin-add", "alias": "", "expires_at_0": "",
        "expires_at_1": "", "password": "added secret"})
    assert added.status_code == 302, added.context["errors"]
    made = Link.objects.get(longurl="https://example.com/pw/admin-add")
    assert password_check("added secret", made.password_hash)
    messages = " ".join(e.change_message for e in LogEntry.objects.all())
    assert "password: set" in messages and "password: removed" in messages
    assert "admin secret" not in messages and "added secret" not in messages


def test_the_admin_takes_the_longest_emoji_password_the_api_takes(transactional_db, kafka_topics,
                                                                  admin_client):
    import re

    from topics.passwords import PASSWORD_MAX_LENGTH

    # 128 characters (code points), as the API accepts; 256 UTF-16 code units, which is what a
    # browser's maxlength counts (HTML's "length" of a value), so the page must allow 256.
    password = "🔑" * PASSWORD_MAX_LENGTH
    units = len(password.encode("utf-16-le")) // 2
    link = services.link_create(longurl="https://example.com/pw/admin-emoji").link
    url = f"/admin/links/link/{link.pk}/change/"
    for page_url in (url, "/admin/links/link/add/"):
        page = admin_client.get(page_url).content.decode()
        field = re.search(r'<input type="password" name="password"[^>]*>', page).group(0)
        assert int(re.search(r'maxlength="(\d+)"', field).group(1)) >= units, page_url
    form = {"longurl": link.longurl, "expires_at_0": "", "expires_at_1": "",
            "click_counters-TOTAL_FORMS": "0", "click_counters-INITIAL_FORMS": "0"}
    # One character more is refused on the server, which counts characters, not code units.
    longer = admin_client.post(url, {**form, "password": password + "🔑"})
    assert longer.status_code == 200 and Link.objects.get(pk=link.pk).password_hash is None
    response = admin_client.post(url, {**form, "password": password})
    assert response.status_code == 302, response.context["errors"]
    changed = Link.objects.get(pk=link.pk)
    assert password_check(password, changed.password_hash)
    assert not password_check(password[:-1], changed.password_hash)
    assert records(link.tinyurl)[-1].password_hash == changed.password_hash
    # The add form alike.
    added = admin_client.post("/admin/links/link/add/", {
        "longurl": "https://example.com/pw/admin-emoji-add", "alias": "", "expires_at_0": "",
        "expires_at_1": "", "password": password})
    assert added.status_code == 302, added.context["errors"]
    made = Link.objects.get(longurl="https://example.com/pw/admin-emoji-add")
    assert password_check(password, made.password_hash)
