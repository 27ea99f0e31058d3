"""Every way a target enters is checked the same way (links.validation.longurl_check): PUT
/create, the admin's change form, the services any import would call, and no other path. A
blocked host is the example: each path refuses it with a clear message, changes nothing and
publishes nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from links import protection, services
from links.models import Link
from testkit import ROOT, topic_end
from topics.links import links_topic

BLOCKED = "https://www.evil.example/landing"
MESSAGE = "links to evil.example and its subdomains are not accepted here (blocked by the operators)"


@pytest.fixture
def blocklist(transactional_db):
    protection.blocked_host_add(host="evil.example", reason="phishing")
    yield
    protection.blocklist_cache_clear()


def links_end() -> int:
    return topic_end(links_topic())


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("shortener_create_refused_total", {"reason": reason}) or 0


def test_create_refuses_a_blocked_host(master, blocklist):
    end, before = links_end(), refused("blocked_host")
    response = master.put({"longurl": BLOCKED})
    assert (response.status_code, response.json()) == (400, {"error": MESSAGE})
    assert refused("blocked_host") == before + 1
    assert not Link.objects.exists()
    assert links_end() == end


def test_the_admins_add_form_refuses_a_blocked_host(admin_client, blocklist):
    """The admin's add form makes links through links_create_many (links/admin_forms.py), so
    it refuses what /create refuses, with /create's message, on the field."""
    response = admin_client.post("/admin/links/link/add/", {"longurl": BLOCKED, "alias": "blk"})
    assert response.status_code == 200
    assert MESSAGE in response.content.decode()
    assert not Link.objects.exists()


def test_the_admins_change_form_refuses_a_blocked_host(admin_client, blocklist):
    link = services.link_create(longurl="https://example.com/one-validation").link
    link.refresh_from_db()
    end = links_end()
    response = admin_client.post(f"/admin/links/link/{link.pk}/change/",
                                 {"longurl": BLOCKED, "expires_at_0": "", "expires_at_1": ""})
    assert response.status_code == 200  # the form again, with the reason on its field
    assert MESSAGE in response.content.decode()
    row = Link.objects.get(pk=link.pk)
    assert (row.longurl, row.state_version, row.published_at) == (
        "https://example.com/one-validation", 1, link.published_at)
    assert links_end() == end


def test_the_services_refuse_a_blocked_host(blocklist):
    """What any import would call: link_create and link_update check the target themselves."""
    from links.validation import LongurlRefused

    with pytest.raises(LongurlRefused) as caught:
        services.link_create(longurl=BLOCKED)
    assert (caught.value.code, caught.value.message) == ("blocked_host", MESSAGE)
    assert not Link.objects.exists()

    link = services.link_create(longurl="https://example.com/one-validation-service").link
    end = links_end()
    with pytest.raises(LongurlRefused) as caught:
        services.link_update(link=link, longurl="https://EVIL.example./")
    assert caught.value.code == "blocked_host"
    row = Link.objects.get(pk=link.pk)
    assert (row.longurl, row.state_version) == ("https://example.com/one-validation-service", 1)
    assert links_end() == end


@pytest.mark.parametrize(("longurl", "code"), [
    ("ftp://example.com/", "scheme"),
    ("https://example.com/" + "a" * 9000, "too_long"),
    ("http://10.1.2.3/", "private_host"),
    (42, "type"),
])
def test_every_rule_reaches_the_admin_and_the_services(admin_client, transactional_db, longurl,
                                                        code):
    """Not only the blocklist: each rule refuses the same way on every path (the code is the
    metric label /create counts)."""
    from links.validation import LongurlRefused, longurl_check

    link = services.link_create(longurl="https://example.com/one-validation-rules").link
    with pytest.raises(LongurlRefused) as caught:
        longurl_check(longurl)
    assert caught.value.code == code
    with pytest.raises(LongurlRefused):
        services.link_update(link=link, longurl=longurl)
    if isinstance(longurl, str):
        response = admin_client.post(f"/admin/links/link/{link.pk}/change/",
                                     {"longurl": longurl, "expires_at_0": "",
                                      "expires_at_1": ""})
        assert caught.value.message in response.content.decode().replace("&#x27;", "'")
    assert Link.objects.get(pk=link.pk).state_version == 1


# --- no other path -------------------------------------------------------------------------------

PRODUCT = ("links", "redirects", "shortener_project", "tools")


def _product_modules():
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path, ast.parse(path.read_text(), filename=str(path))


def _functions(tree: ast.AST):
    """(enclosing function name or "<module>", node) for every node of the tree."""
    def walk(node: ast.AST, owner: str):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                else owner
            yield name, child
            yield from walk(child, name)
    yield from walk(tree, "<module>")


def _writes_longurl(node: ast.AST) -> bool:
    """Whether `node` writes a link's longurl: Link(longurl=...), .create/.update/..._or_create(
    longurl=...), an assignment to `x.longurl`, or SQL that inserts into or updates links_link
    naming longurl."""
    if isinstance(node, ast.Call) and any(
            k.arg == "longurl" or (k.arg == "defaults" and "'longurl'" in ast.unparse(k.value))
            for k in node.keywords):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        return name in ("Link", "create", "update", "get_or_create", "update_or_create")
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
        return any(isinstance(t, ast.Attribute) and t.attr == "longurl" for t in flat)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        sql = " ".join(node.value.lower().split())
        return ("links_link" in sql and "longurl" in sql
                and ("insert into" in sql or "update" in sql or "copy" in sql))
    return False


def test_no_target_enters_without_the_one_check():
    """Reads the product's code: a link's longurl is written only in inserts.links_insert and
    inserts.aliases_insert (called only by services.links_create_many, which link_create,
    /create, the bulk API and the admin's add form run) and changes.link_update, and both
    callers run validation.longurl_check first. A new path (an import command, a raw INSERT)
    that writes a longurl elsewhere fails this test."""
    writers = set()
    insert_callers = set()
    for path, tree in _product_modules():
        module = path.relative_to(ROOT).as_posix()
        for owner, node in _functions(tree):
            if _writes_longurl(node):
                writers.add((module, owner))
            if (isinstance(node, ast.Call)
                    and ast.unparse(node.func).split(".")[-1] in ("links_insert",
                                                                  "aliases_insert")):
                insert_callers.add((module, owner))
    assert writers == {("links/inserts.py", "links_insert"), ("links/inserts.py", "aliases_insert"),
                       ("links/changes.py", "link_update")}
    assert insert_callers == {("links/services.py", "links_create_many")}

    for module, owner in (("links/services.py", "links_create_many"),
                          ("links/changes.py", "link_update")):
        function = next(n for n in ast.walk(ast.parse((ROOT / module).read_text()))
                        if isinstance(n, ast.FunctionDef) and n.name == owner)
        checks = [n for n in ast.walk(function) if isinstance(n, ast.Call)
                  and ast.unparse(n.func) == "validation.longurl_check"]
        assert checks, f"{owner} does not call validation.longurl_check"


def test_the_master_modules_import_no_cycle():
    """links.protection (the blocklist) no longer imports links.services, even lazily, and
    links.validation depends on neither services nor the views."""
    def imports(module: str) -> set[str]:
        tree = ast.parse((ROOT / Path(*module.split("."))).with_suffix(".py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        return found

    assert not {"links.services", "links.validation"} & imports("links.protection")
    assert not {"links.services", "links.views", "links.admin"} & imports("links.validation")
