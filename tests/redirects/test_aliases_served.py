"""Aliases end to end on a local cluster (the master's live server, two replicas with their
consume_links, web servers and reporters, the master's consume_clicks; real PostgreSQL, Kafka,
Redis): an alias made through PUT /create/bulk answers 302 on both replicas, its clicks are
counted there and reach the master's total; a generated tinyurl beside it works as before; a
record claiming a reserved path is refused by consume_links, counted, and never served."""

from __future__ import annotations

from links.models import Link
from testkit import link_produce, wait_until

ALIAS = "Spring_Sale-2026"  # 16 characters, "_" and "-": nothing a generated tinyurl has


def total(tinyurl: str) -> int:
    return Link.objects.get(tinyurl=tinyurl).clicks


def test_an_alias_made_in_bulk_redirects_on_both_replicas_and_its_clicks_reach_the_master(
    master, replica_factory, clicks_consumer
):
    r1, r2 = replica_factory(reporter=True), replica_factory(reporter=True)
    response = master.http.put(f"{master.url}/create/bulk", timeout=60, json=[
        {"longurl": "https://example.com/aliases/sale", "alias": ALIAS},
        {"longurl": "https://example.com/aliases/generated"},
    ])
    assert response.status_code == 200, response.text
    aliased, generated = response.json()["results"]
    assert aliased == {"longurl": "https://example.com/aliases/sale", "tinyurl": ALIAS}
    code = generated["tinyurl"]
    assert len(code) == 7 and code.isalnum()
    for replica in (r1, r2):
        wait_until(lambda r=replica: r.target(ALIAS) is not None and r.target(code) is not None,
                   timeout=20, what=f"both links on {replica.name}")
        answer = replica.get(ALIAS)
        assert answer.status_code == 302, answer.text
        assert answer.headers["Location"] == "https://example.com/aliases/sale"
        assert replica.get(code).headers["Location"] == "https://example.com/aliases/generated"
        # Another spelling is another tinyurl (case-sensitive): not this link.
        assert replica.get(ALIAS.lower()).status_code == 404
    r1.click(ALIAS, 120)
    r2.click(ALIAS, 30)
    r2.click(code, 5)
    assert (r1.clicks_count(ALIAS), r2.clicks_count(ALIAS)) == (121, 31)  # with the checks above
    assert r1.stop_reporter() == 0 and r2.stop_reporter() == 0  # a stop flushes every count
    wait_until(lambda: total(ALIAS) == 152 and total(code) == 7, timeout=30,
               what="the alias' clicks in the master's total")


def test_a_record_claiming_a_reserved_path_is_refused_counted_and_never_served(replica_factory):
    replica = replica_factory()
    offsets = [link_produce(name, 1, "https://evil.example/")
               for name in ("metrics", "Healthz", "READYZ")]
    link_produce("ok-alias", 1, "https://example.com/after")  # what comes after still applies
    wait_until(lambda: replica.target("ok-alias") is not None, timeout=30, what="the last record")
    # The topic is the test run's: other tests' bad records are in it too; these are named.
    # Logged once the batch's write has been answered (redirects/services.links_batch_done),
    # so possibly just after the last record is served: waited for.
    for offset in offsets:
        wait_until(lambda o=offset: f"partition=0 offset={o} reason=reserved"
                   in replica.consumer_output(), timeout=10, what=f"offset {offset} logged")
    assert replica.stats()["rejected"] >= 3
    for name in ("metrics", "Healthz", "READYZ"):
        assert replica.link(name) is None
    metrics = replica.get("metrics")
    assert metrics.status_code == 200 and "shortener_" in metrics.text
    assert replica.get("healthz").json() == {"status": "ok"}
    assert replica.get("Healthz").status_code == 404
    assert replica.get("readyz").status_code in (200, 503)
    assert replica.get("ok-alias").status_code == 302
