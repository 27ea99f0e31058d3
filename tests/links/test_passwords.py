"""Password-protected links through the master (links/passwords.py, links.services) on real
PostgreSQL and Kafka, and end to end with a replica (consume_links, its web server, its
reporter) and the master's consume_clicks: only the hash is stored and published, the replica
answers the form, the right password redirects, and only a visit that reaches the target is a
click in the master's total."""

from __future__ import annotations

import itertools
import logging

import pytest
from django.core.exceptions import ValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def test_same_longurl_same_tinyurl_holds_per_password(transactional_db, kafka_topics):
    longurl = "https://example.com/pw/shared"
    public = services.link_create(longurl=longurl).link
    # A password makes the longurl's link with that password; the public one is left as it is.
    first = services.link_create(longurl=longurl, password=PASSWORD)
    assert first.created and first.link.tinyurl != public.tinyurl
    assert password_check(PASSWORD, first.link.password_hash)
    assert Link.objects.get(pk=public.pk).password_hash is None
    # A retry with that password gets the same link; another password, a link of its own.
    again = services.link_create(longurl=longurl, password=PASSWORD)
    assert (again.created, again.link.pk) == (False, first.link.pk)
    other = services.link_create(longurl=longurl, password="another")
    assert other.created and other.link.pk not in (public.pk, first.link.pk)
    # Without a password: always the public link, never a protected one (PUT /create's trap).
    plain = services.link_create(longurl=longurl)
    assert (plain.created, plain.link.pk) == (False, public.pk)
    # A protected longurl with no public link yet: a create without a password makes one.
    fresh = "https://example.com/pw/protected-first"
    protected_first = services.link_create(longurl=fresh, password=PASSWORD).link
    made_public = services.link_create(longurl=fresh)
    assert made_public.created and made_public.link.password_hash is None
    assert made_public.link.pk != protected_first.pk
    # In one call: one link per (longurl, password), the public one apart.
    batch = "https://example.com/pw/batch"
    one, same, another, none = services.links_create_many([
        services.CreateItem(longurl=batch, password=PASSWORD),
        services.CreateItem(longurl=batch, password=PASSWORD),
        services.CreateItem(longurl=batch, password="another"),
        services.CreateItem(longurl=batch)])
    assert one.created and (same.created, same.link.pk) == (False, one.link.pk)
    assert another.created and none.created
    assert len({one.link.pk, another.link.pk, none.link.pk}) == 3
    assert none.link.password_hash is None
    # Many longurls (the bulk path, which inserts before it reads): the same links again.
    many = services.links_create_many(
        [services.CreateItem(longurl=batch, password=PASSWORD),
         services.CreateItem(longurl=batch)]
        + [services.CreateItem(longurl=f"https://example.com/pw/many/{n}")
           for n in range(services.INSERT_FIRST_MIN)])
    assert (many[0].created, many[0].link.pk) == (False, one.link.pk)
    assert (many[1].created, many[1].link.pk) == (False, none.link.pk)


def test_an_alias_keeps_its_password(transactional_db, kafka_topics):
    longurl = "https://example.com/pw/alias"
    made = services.link_create(longurl=longurl, alias="pw-shared", password=PASSWORD)
    again = services.link_create(longurl=longurl, alias="pw-shared", password=PASSWORD)
    assert made.created and (again.created, again.link.pk) == (False, made.link.pk)
    with pytest.raises(passwords.PasswordConflict) as refused:
        services.link_create(longurl=longurl, alias="pw-shared", password="another")
    assert refused.value.status == 409
    unprotected = services.link_create(longurl=longurl, alias="pw-open").link
    with pytest.raises(passwords.PasswordConflict):
        services.link_create(longurl=longurl, alias="pw-open", password=PASSWORD)
    assert Link.objects.get(pk=unprotected.pk).password_hash is None
    # In one call: a later item with another password than the first's conflicts.
    first, other = services.links_create_many([
        services.CreateItem(longurl=longurl, alias="pw-batch", password=PASSWORD),
        services.CreateItem(longurl=longurl, alias="pw-batch", password="another")])
    assert first.created and isinstance(other, passwords.PasswordConflict)


def test_protecting_a_link_frees_its_longurl_and_changes_keep_the_rule(
    transactional_db, kafka_topics
):
    longurl = "https://example.com/pw/frees"
    link = services.link_create(longurl=longurl).link
    services.link_update(link=link, password=PASSWORD)
    # The longurl has no public link now: a create without a password makes one; one with the
    # password finds the protected link (its hash is salted from the longurl).
    public = services.link_create(longurl=longurl)
    assert public.created and public.link.pk != link.pk
    found = services.link_create(longurl=longurl, password=PASSWORD)
    assert (found.created, found.link.pk) == (False, link.pk)
    # Setting the same password again is no change (no new version).
    version = Link.objects.get(pk=link.pk).state_version
    services.link_update(link=link, password=PASSWORD)
    assert Link.objects.get(pk=link.pk).state_version == version
    # The public link may not take the protected one's password, nor the protected one lose it
    # while a public link exists: refused with the other link named, nothing changed.
    with pytest.raises(ValidationError) as taken:
        services.link_update(link=public.link, password=PASSWORD)
    assert taken.value.code == "password_conflict" and link.tinyurl in taken.value.messages[0]
    assert Link.objects.get(pk=public.link.pk).password_hash is None
    with pytest.raises(ValidationError) as unprotect:
        services.link_update(link=link, password="")
    assert unprotect.value.code == "password_conflict"
    assert public.link.tinyurl in unprotect.value.messages[0]
    assert Link.objects.get(pk=link.pk).password_hash is not None
    assert Link.objects.get(pk=link.pk).state_version == version
    # Once the public link is protected by another password, the first may lose its own.
    services.link_update(link=public.link, password="another")
    services.link_update(link=link, password="")
    assert Link.objects.get(pk=link.pk).password_hash is None
    # A public link moved onto a longurl whose public link exists: refused as ever.
    elsewhere = services.link_create(longurl="https://example.com/pw/elsewhere").link
    with pytest.raises(ValidationError, match=f"link {link.tinyurl} already has this longurl"):
        services.link_update(link=elsewhere, longurl=longurl)
    # A protected one may move there (its longurl's public link is not its kind), with its
    # password given again: the hash is salted from the new longurl, so a create finds it.
    services.link_update(link=elsewhere, password=PASSWORD)
    with pytest.raises(ValidationError) as required:
        services.link_update(link=elsewhere, longurl=longurl)
    assert required.value.code == "password_required"
    moved = services.link_update(link=elsewhere, longurl=longurl, password=PASSWORD)
    assert moved.longurl == longurl and moved.password_hash is not None
    found_again = services.link_create(longurl=longurl, password=PASSWORD)
    assert (found_again.created, found_again.link.pk) == (False, elsewhere.pk)


def test_a_takedown_holds_against_a_password(transactional_db, kafka_topics):
    longurl = "https://example.com/pw/down"
    link = services.link_create(longurl=longurl).link
    services.link_update(link=link, disabled=True)
    refused = services.links_create_many([services.CreateItem(longurl=longurl,
                                                              password=PASSWORD)])[0]
    assert isinstance(refused, services.LinkDisabled) and refused.link.pk == link.pk
    assert Link.objects.filter(longurl=longurl).count() == 1
    # Its own protected link taken down: LinkDisabled for that link, as for a public one.
    other = "https://example.com/pw/down-protected"
    protected_link = services.link_create(longurl=other, password=PASSWORD).link
    services.link_update(link=protected_link, disabled=True)
    again = services.links_create_many([services.CreateItem(longurl=other,
                                                            password=PASSWORD)])[0]
    assert isinstance(again, services.LinkDisabled) and again.link.pk == protected_link.pk


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


_RUN = itertools.count()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(calls=st.lists(st.lists(st.tuples(st.integers(0, 2), st.sampled_from([None, "a", "b"])),
                               min_size=1, max_size=5), min_size=1, max_size=4))
def test_one_link_per_longurl_and_password_whatever_the_calls(transactional_db, kafka_topics,
                                                              monkeypatch, calls):
    """Any sequence of creates (several longurls, with no password or one of two, one or many
    items a call): every (longurl, password) gets one link, always the same; the one without a
    password is never protected; the links with one check their own password and no other. The
    hash's cost is lowered for this test only (the parameters travel in the hash)."""
    monkeypatch.setattr("topics.passwords.LOG2_N", 4)
    run = next(_RUN)
    seen: dict[tuple[int, str | None], int] = {}
    for call in calls:
        items = [services.CreateItem(longurl=f"https://example.com/pw/prop/{run}/{n}",
                                     password=password) for n, password in call]
        for (n, password), outcome in zip(call, services.links_create_many(items)):
            assert isinstance(outcome, services.LinkCreated), outcome
            link = outcome.link
            assert seen.setdefault((n, password), link.pk) == link.pk
            if password is None:
                assert link.password_hash is None
            else:
                assert password_check(password, link.password_hash)
                assert not password_check({"a": "b", "b": "a"}[password], link.password_hash)
    assert len(set(seen.values())) == len(seen)
    assert Link.objects.filter(longurl__startswith=f"https://example.com/pw/prop/{run}/").count() \
        == len(seen)
