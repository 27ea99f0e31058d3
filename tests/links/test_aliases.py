"""Custom aliases on the master (links/tinyurls.py, links/inserts.py): through the service, the
bulk API (its "alias" option, not PUT /create) and the admin's add form, on real PostgreSQL and
Kafka. Taken (409), reserved (409, every name in any case), invalid (400), the same longurl's
alias answered again, a longurl with its generated tinyurl and aliases apart."""

from __future__ import annotations

import pytest

from links import services, tinyurls
from links.models import Link
from tests.links.test_bulk import bulk
from testkit import topic_records
from topics.links import links_topic
from topics.records import RESERVED_NAMES


def outcome(longurl: str, alias: object = None) -> object:
    return services.links_create_many([services.CreateItem(longurl=longurl, alias=alias)])[0]


def test_an_alias_is_created_published_and_answered_again(transactional_db, kafka_topics):
    made = services.link_create(longurl="https://example.com/alias/one", alias="promo-2026_A")
    assert made.created and made.link.tinyurl == "promo-2026_A" and made.link.alias
    stored = Link.objects.get(tinyurl="promo-2026_A")
    assert stored.alias and stored.published_at is not None
    keys = [record.key for record in topic_records(links_topic())]
    assert b"promo-2026_A" in keys
    # A retry (same alias, same longurl) is the same link, not a refusal.
    again = services.link_create(longurl="https://example.com/alias/one", alias="promo-2026_A")
    assert (again.created, again.link.pk) == (False, made.link.pk)
    # Case-sensitive, as tinyurls are: another spelling is another alias.
    other = services.link_create(longurl="https://example.com/alias/one", alias="PROMO-2026_a")
    assert other.created and other.link.pk != made.link.pk


def test_a_longurl_has_its_generated_tinyurl_and_its_aliases_apart(transactional_db,
                                                                    kafka_topics):
    longurl = "https://example.com/alias/shared"
    alias_link = services.link_create(longurl=longurl, alias="shared").link
    generated = services.link_create(longurl=longurl).link
    assert not generated.alias and len(generated.tinyurl) == 7 and generated.tinyurl.isalnum()
    # "Same longurl, same tinyurl" holds for creates without an alias: never the alias' link.
    assert services.link_create(longurl=longurl).link.pk == generated.pk
    assert services.link_create(longurl=longurl, alias="shared2").created
    assert Link.objects.filter(longurl=longurl).count() == 3
    assert alias_link.pk != generated.pk


def test_a_taken_alias_is_refused_409(transactional_db, kafka_topics):
    first = services.link_create(longurl="https://example.com/alias/first", alias="taken")
    refused = outcome("https://example.com/alias/second", "taken")
    assert isinstance(refused, tinyurls.AliasTaken)
    assert (refused.status, refused.code) == (409, "alias_taken") and "taken" in refused.message
    # A generated tinyurl is taken as well, for another longurl; for its own it is its link.
    generated = services.link_create(longurl="https://example.com/alias/gen").link
    assert isinstance(outcome("https://example.com/alias/other", generated.tinyurl),
                      tinyurls.AliasTaken)
    mine = outcome("https://example.com/alias/gen", generated.tinyurl)
    assert (mine.link.pk, mine.created) == (generated.pk, False)
    # Within one call: the first item gets it, a later one for another longurl is refused.
    results = services.links_create_many([
        services.CreateItem(longurl="https://example.com/alias/x", alias="once"),
        services.CreateItem(longurl="https://example.com/alias/x", alias="once"),
        services.CreateItem(longurl="https://example.com/alias/y", alias="once"),
    ])
    assert results[0].created and results[1].link.pk == results[0].link.pk
    assert not results[1].created and isinstance(results[2], tinyurls.AliasTaken)
    assert Link.objects.get(tinyurl="taken").pk == first.link.pk
    assert not Link.objects.filter(longurl="https://example.com/alias/y").exists()


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_every_reserved_name_is_refused_409_in_any_case(transactional_db, name):
    for spelling in (name, name.upper(), name.capitalize(), name[:-1] + name[-1].upper()):
        refused = outcome("https://example.com/alias/reserved", spelling)
        assert isinstance(refused, tinyurls.AliasReserved), spelling
        assert refused.status == 409 and "reserved" in refused.message
    assert not Link.objects.exists()


@pytest.mark.parametrize("alias, why", [
    ("ab", "3 to 64"), ("a" * 65, "3 to 64"), ("", "3 to 64"), ("with space", "only"),
    ("dot.ted", "only"), ("slash/ed", "only"), ("ünï", "only"), ("percent%41", "only"),
    (42, "string"), (["abc"], "string"),
])
def test_an_invalid_alias_is_refused_400(transactional_db, alias, why):
    refused = outcome("https://example.com/alias/invalid", alias)
    assert isinstance(refused, tinyurls.AliasInvalid) and refused.status == 400
    assert why in refused.message
    assert not Link.objects.exists()


def test_the_edges_of_the_alias_shape_are_accepted(transactional_db, kafka_topics):
    for i, alias in enumerate(["abc", "a" * 64, "___", "---", "A-z_0-9", "0123456"]):
        made = outcome(f"https://example.com/alias/edge/{i}", alias)
        assert isinstance(made, services.LinkCreated) and made.link.tinyurl == alias


def test_an_alias_link_may_take_a_target_a_generated_link_has(transactional_db, kafka_topics):
    services.link_create(longurl="https://example.com/alias/target")
    alias_link = services.link_create(longurl="https://example.com/alias/before",
                                      alias="movable").link
    services.link_update(link=alias_link, longurl="https://example.com/alias/target")
    assert Link.objects.get(tinyurl="movable").longurl == "https://example.com/alias/target"


def test_the_bulk_api_takes_an_alias_and_answers_409_and_400(master, transactional_db):
    services.link_create(longurl="https://example.com/alias/bulk-held", alias="held")
    items = [
        {"longurl": "https://example.com/alias/bulk", "alias": "bulk-Alias"},
        {"longurl": "https://example.com/alias/bulk-other", "alias": "held"},
        {"longurl": "https://example.com/alias/bulk-other", "alias": "Metrics"},
        {"longurl": "https://example.com/alias/bulk-other", "alias": "no"},
        {"longurl": "https://example.com/alias/bulk-other", "alias": None},
        {"longurl": "ftp://example.com/", "alias": "bad-longurl"},
    ]
    results = bulk(master, items).json()["results"]
    assert results[0] == {"longurl": "https://example.com/alias/bulk", "tinyurl": "bulk-Alias"}
    assert (results[1]["status"], results[1]["code"]) == (409, "alias_taken")
    assert (results[2]["status"], results[2]["code"]) == (409, "alias_reserved")
    assert "reserved" in results[2]["error"]
    assert (results[3]["status"], results[3]["code"]) == (400, "alias_invalid")
    assert len(results[4]["tinyurl"]) == 7  # null: a generated one
    assert results[5]["status"] == 400 and results[5]["code"] != "alias_invalid"
    # PUT /create stays as the assignment defines it: an "alias" there is refused (400), not
    # ignored into a generated link its caller would believe named; nothing is created.
    plain = master.put({"longurl": "https://example.com/alias/create", "alias": "nope-create"})
    assert plain.status_code == 400 and "POST /api/v1/links" in plain.json()["error"]
    assert not Link.objects.filter(longurl="https://example.com/alias/create").exists()


def test_the_admin_adds_a_link_with_an_alias_and_shows_it(admin_client, kafka_topics):
    response = admin_client.post("/admin/links/link/add/", {
        "longurl": "https://example.com/alias/admin", "alias": "from-admin",
        "expires_at_0": "", "expires_at_1": ""})
    assert response.status_code == 302, (response.context["adminform"].form.errors, response.context["errors"])
    link = Link.objects.get(tinyurl="from-admin")
    assert link.alias and link.published_at is not None
    page = admin_client.get(f"/admin/links/link/{link.pk}/change/").content.decode()
    assert "from-admin" in page
    listed = admin_client.get("/admin/links/link/", {"alias__exact": "1"}).content.decode()
    assert "from-admin" in listed
    # Refusals go on the alias field, and nothing is made.
    for alias, words in (("from-admin", "taken"), ("ADMIN", "reserved"), ("a b", "only")):
        page = admin_client.post("/admin/links/link/add/", {
            "longurl": "https://example.com/alias/admin-2", "alias": alias,
            "expires_at_0": "", "expires_at_1": ""}).content.decode()
        assert words in page, alias
    assert not Link.objects.filter(longurl="https://example.com/alias/admin-2").exists()
    # Without an alias: a generated tinyurl.
    admin_client.post("/admin/links/link/add/", {
        "longurl": "https://example.com/alias/admin-3", "expires_at_0": "", "expires_at_1": ""})
    assert len(Link.objects.get(longurl="https://example.com/alias/admin-3").tinyurl) == 7


def test_the_table_itself_keeps_the_rules(transactional_db):
    """Migration 0016's constraints, whatever writes the row: a tinyurl of TINYURL_RE's shape;
    one generated link per longurl, aliases beside it; a tinyurl once."""
    from django.db import IntegrityError, transaction

    from links.selectors import longurl_digest

    def row(tinyurl: str, longurl: str, alias: bool) -> Link:
        return Link.objects.create(tinyurl=tinyurl, longurl=longurl, alias=alias,
                                   longurl_sha256=longurl_digest(longurl))

    row("Gen1234", "https://example.com/t/1", False)
    row("alias-1", "https://example.com/t/1", True)
    row("alias-2", "https://example.com/t/1", True)
    for bad in (("Gen5678", "https://example.com/t/1", False),  # a second generated link
                ("alias-1", "https://example.com/t/2", True),  # a tinyurl twice
                ("a.b.c", "https://example.com/t/3", True),  # not the shape
                ("ab", "https://example.com/t/4", True),
                ("x" * 65, "https://example.com/t/5", True)):
        with pytest.raises(Exception) as raised, transaction.atomic():
            row(*bad)
        assert isinstance(raised.value, (IntegrityError,)) or "value too long" in str(
            raised.value), bad
    assert Link.objects.count() == 3


def test_the_longurl_lookup_probes_the_partial_unique_index(transactional_db):
    """selectors.links_by_digest's predicate (NOT alias AND password_hash IS NULL) is the public
    links' index's, so PostgreSQL can use it: a create's read of the existing links stays an
    index probe per longurl."""
    from links.selectors import longurl_digest
    from tests.links.test_link_storage import _plan

    plan = _plan("SELECT * FROM links_link WHERE NOT alias AND password_hash IS NULL"
                 " AND longurl_sha256 = ANY(ARRAY("
                 "SELECT decode(h, 'hex') FROM unnest(%s::text[]) AS h))",
                 ["{" + longurl_digest("https://example.com/plan").hex() + "}"])
    assert "links_link_longurl_public" in plan, plan
