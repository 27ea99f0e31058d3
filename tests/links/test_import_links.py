"""`manage.py import_links` run as a process on the test database (real PostgreSQL and Kafka):
CSV and JSON-lines files with bad lines, the printed counts, the errors file, the exit status;
an import stopped after a known line (--limit) or killed mid-way and run again creates nothing
twice and goes on from its state file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from hypothesis import HealthCheck, given
from hypothesis import settings as settings_
from hypothesis import strategies as st

import testkit
from links import importing, services
from links.models import Link
from testkit import ROOT, wait_until


def run(*args: str | Path, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", "import_links", *map(str, args)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
                          **popen)


def _env() -> dict[str, str]:
    return {**os.environ, "SHORTENER_ROLE": "master", "SHORTENER_USER": settings.SHORTENER_USER,
            "DATABASE_URL": testkit.test_database_url("test_import_links"),
            "SHORTENER_LOG_LEVEL": "WARNING"}


CSV = """longurl,expires_at,note
https://example.com/csv/1,,first
https://example.com/csv/2,2099-01-01T00:00:00Z,with expiry
ftp://example.com/nope,,bad scheme

https://example.com/csv/1,,again
"https://example.com/csv/3?a=1,2",,quoted comma
https://example.com/csv/4,tomorrow,bad expiry
"unterminated,,
https://www.blocked.example/x,,blocked
https://example.com/existing,,existing
https://example.com/gone,,taken down
only-two,fields
"""


@pytest.fixture
def blocked_and_existing(transactional_db):
    from links import protection

    protection.blocked_host_add(host="blocked.example")
    services.link_create(longurl="https://example.com/existing")
    gone = services.link_create(longurl="https://example.com/gone").link
    services.link_set_disabled(link=gone, disabled=True)
    yield
    protection.blocklist_cache_clear()


def test_a_csv_file_with_bad_lines(tmp_path, kafka_topics, blocked_and_existing):
    source = tmp_path / "links.csv"
    source.write_text(CSV)
    errors = tmp_path / "errors.jsonl"
    done = run(source, "--batch", "3", "--errors", errors)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        "11 lines: 3 created, 2 existing (skipped), 6 refused (csv 2, scheme 1, expires_at 1, "
        "blocked_host 1, taken_down 1), 0 not acknowledged by Kafka (the outbox sends them)")
    refused = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in refused] == [
        (4, "scheme"), (8, "expires_at"), (9, "csv"), (10, "blocked_host"), (12, "taken_down"),
        (13, "csv")]
    assert refused[0]["input"] == "ftp://example.com/nope,,bad scheme"
    new = Link.objects.filter(longurl__startswith="https://example.com/csv/")
    assert sorted(new.values_list("longurl", flat=True)) == [
        "https://example.com/csv/1", "https://example.com/csv/2",
        "https://example.com/csv/3?a=1,2"]
    assert new.filter(published_at__isnull=True).count() == 0
    assert new.get(longurl="https://example.com/csv/2").expires_at.year == 2099
    # The state file is gone once the file is done; a second run reads it all again and
    # creates nothing.
    assert not (tmp_path / "links.csv.import-state").exists()
    again = run(source, "--batch", "3")
    assert " 0 created, 5 existing (skipped), 6 refused" in again.stdout
    assert Link.objects.count() == 2 + 3


def test_a_jsonl_file_stopped_and_resumed_creates_nothing_twice(tmp_path, transactional_db,
                                                                 kafka_topics):
    lines = []
    for i in range(20):
        lines.append(json.dumps({"longurl": f"https://example.com/jsonl/{i % 15}"}))
        if i % 7 == 3:
            lines.append("{not json")
    lines.insert(5, json.dumps(["https://example.com/list"]))
    lines.insert(9, json.dumps({"url": "https://example.com/no-longurl"}))
    source = tmp_path / "links.jsonl"
    source.write_text("\n".join(lines) + "\n")
    state = tmp_path / "links.jsonl.import-state"
    first = run(source, "--batch", "4", "--limit", "10", "--no-progress")
    assert first.returncode == 3, first.stderr
    # Lines 1-10: 7 distinct longurls, a list (json), a bad line (json), no longurl (json).
    assert "10 lines: 7 created, 0 existing (skipped), 3 refused (json 3)" in first.stdout
    assert "stopped after 10 lines" in first.stdout
    saved = json.loads(state.read_text())["counts"]
    assert (saved["lines"], saved["created"]) == (10, 7)
    assert saved["offset"] == sum(len(line) + 1 for line in lines[:10])
    assert Link.objects.count() == 7
    second = run(source, "--batch", "4", "--no-progress")
    assert f"resuming after line 10 (byte {saved['offset']})" in second.stdout
    assert "25 lines: 15 created, 5 existing (skipped), 5 refused (json 5)" in second.stdout
    assert Link.objects.count() == 15 and not state.exists()
    assert not Link.objects.filter(published_at__isnull=True).exists()


def test_an_import_killed_mid_way_goes_on_and_creates_nothing_twice(tmp_path, transactional_db,
                                                                    kafka_topics):
    n = 3000
    source = tmp_path / "big.jsonl"
    # Every 50th line refused: the errors file must hold every refusal of a committed batch,
    # even when the run is killed (its resume does not read those lines again).
    source.write_text("".join(json.dumps({"longurl": f"https://example.com/kill/{i}"
                                          if i % 50 else f"ftp://example.com/kill/{i}"}) + "\n"
                              for i in range(n)))
    state = tmp_path / "big.jsonl.import-state"
    errors = tmp_path / "errors.jsonl"
    proc = subprocess.Popen([sys.executable, "manage.py", "import_links", str(source), "--batch",
                             "100", "--no-progress", "--errors", str(errors)], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: state.exists() and json.loads(state.read_text())["counts"]["lines"]
                   >= 500, timeout=60, what="five batches committed")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = json.loads(state.read_text())["counts"]
    assert 0 < killed_at["lines"] < n  # stopped mid-way
    refused_lines = {json.loads(line)["line"] for line in errors.read_text().splitlines()}
    assert len(refused_lines) >= killed_at["lines"] // 50
    made = Link.objects.count()
    assert made >= killed_at["created"]
    done = run(source, "--batch", "100", "--no-progress", "--errors", errors)
    assert done.returncode == 3, done.stderr
    # The batch in progress at the kill may have committed after the state was saved: its
    # lines are found again (existing), never created twice.
    assert f"{n} lines: " in done.stdout and f" {n // 50} refused (scheme {n // 50})" in done.stdout
    created = int(done.stdout.split(" lines: ")[1].split(" created")[0])
    existing = int(done.stdout.split(" created, ")[1].split(" existing")[0])
    assert created + existing == n - n // 50 and existing == made - killed_at["created"]
    assert Link.objects.count() == n - n // 50
    # Every refused line is in the errors file (one may be there twice, if the kill fell between
    # its write and the state's save).
    assert {json.loads(line)["line"] for line in errors.read_text().splitlines()} == \
        {i + 1 for i in range(0, n, 50)}


def test_a_line_nested_too_deep_is_refused_and_the_rest_imported(tmp_path, transactional_db,
                                                                 kafka_topics):
    lines = [json.dumps({"longurl": f"https://example.com/deep/{i}"}) for i in range(10)]
    lines.insert(5, '{"longurl": "https://example.com/x", "x": ' + "[" * 100_000
                 + "]" * 100_000 + "}")
    source = tmp_path / "deep.jsonl"
    source.write_text("\n".join(lines) + "\n")
    done = run(source, "--no-progress")
    assert done.returncode == 3, done.stderr
    assert "11 lines: 10 created, 0 existing (skipped), 1 refused (json 1)" in done.stdout
    assert Link.objects.count() == 10


def test_a_csv_without_a_longurl_column_is_refused(tmp_path, transactional_db):
    source = tmp_path / "bad.csv"
    source.write_text("url\nhttps://example.com/x\n")
    done = run(source, "--no-progress")
    assert done.returncode == 1 and "longurl column" in done.stderr
    assert not Link.objects.exists()


def test_a_state_file_of_another_file_is_refused(tmp_path, transactional_db, kafka_topics):
    source = tmp_path / "a.jsonl"
    source.write_text("".join(json.dumps({"longurl": f"https://example.com/a/{i}"}) + "\n"
                              for i in range(4)))
    assert run(source, "--limit", "2", "--no-progress").returncode == 0
    source.write_text(json.dumps({"longurl": "https://example.com/other"}) + "\n")
    done = run(source, "--no-progress")
    assert done.returncode == 1 and "another file" in done.stderr
    assert run(source, "--no-progress", "--from-start").returncode == 0
    assert Link.objects.count() == 3


def test_a_file_edited_before_the_offset_is_refused_however_far_in(tmp_path, transactional_db,
                                                                  kafka_topics):
    """The state of an import stopped past 64 KiB; a byte changed after the first 64 KiB but
    before that offset (the size unchanged): the re-run is refused, creates nothing and keeps
    the state; --from-start imports the file as it now is."""
    source = tmp_path / "edited.jsonl"
    lines = [json.dumps({"longurl": f"https://example.com/edit/{i:05}"}) + "\n"
             for i in range(3000)]
    source.write_text("".join(lines))
    first = run(source, "--limit", "2000", "--no-progress")
    assert first.returncode == 0, first.stderr
    state = tmp_path / "edited.jsonl.import-state"
    offset = json.loads(state.read_text())["counts"]["offset"]
    assert offset > 64 * 1024 + 10_000
    data = bytearray(source.read_bytes())
    at = data.index(b"edit/01800")  # line 1801: past 64 KiB, before the offset
    assert 64 * 1024 < at < offset
    data[at:at + 4] = b"EDIT"
    source.write_bytes(bytes(data))
    made = Link.objects.count()
    done = run(source, "--no-progress")
    assert done.returncode == 1, done.stdout
    assert f"its first {offset} bytes (the lines already imported) are not the ones" in done.stderr
    assert "resuming" not in done.stdout
    assert Link.objects.count() == made == 2000 and state.exists()
    again = run(source, "--no-progress", "--from-start")
    assert again.returncode == 0, again.stderr
    assert "3000 lines: 1001 created, 1999 existing" in again.stdout  # the edited line is new


def test_a_state_file_that_only_fingerprinted_the_start_is_refused(tmp_path, transactional_db):
    """A state file of the version that hashed only the first 64 KiB cannot vouch for the rest:
    refused, with what to do."""
    source = tmp_path / "old.jsonl"
    source.write_text(json.dumps({"longurl": "https://example.com/old"}) + "\n")
    state = tmp_path / "old.jsonl.import-state"
    state.write_text(json.dumps({"file": str(source), "fingerprint": "0" * 64, "counts": {
        "lines": 1, "created": 1, "existing": 0, "refused": {}, "unacknowledged": 0,
        "offset": 10, "line_number": 1}}))
    done = run(source, "--no-progress")
    assert done.returncode == 1 and "not a state file of this version" in done.stderr
    assert "--from-start" in done.stderr and not Link.objects.exists()


@settings_(max_examples=25, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop=st.integers(1, 11), position=st.floats(0, 1, exclude_max=True),
       replacement=st.sampled_from([b"x", b"\n", b" ", b"}", b"\xff"]),
       csv=st.booleans())
def test_any_change_before_the_offset_refuses_the_resume_and_any_after_does_not(
        tmp_path_factory, transactional_db, kafka_topics, stop, position, replacement, csv):
    """Any file stopped after any line, one byte changed anywhere (the CSV header included):
    before the offset, the resume is refused and creates nothing; at or after it, the resume
    goes on."""
    folder = tmp_path_factory.mktemp("edit")
    if csv:
        source = folder / "links.csv"
        text = "longurl\n" + "".join(f"https://example.com/c/{i}\n" for i in range(12))
    else:
        source = folder / "links.jsonl"
        text = "".join(json.dumps({"longurl": f"https://example.com/j/{i}"}) + "\n"
                       for i in range(12))
    source.write_bytes(text.encode())
    state = folder / (source.name + ".import-state")
    fmt = "csv" if csv else "jsonl"
    Link.objects.all().delete()
    importing.import_file(source, fmt=fmt, batch=4, state=state, limit=stop)
    offset = json.loads(state.read_text())["counts"]["offset"]
    data = bytearray(text.encode())
    at = int(position * len(data))
    if data[at:at + 1] == replacement:
        replacement = b"y"
    data[at:at + 1] = replacement
    source.write_bytes(bytes(data))
    made = Link.objects.count()
    if at < offset:
        with pytest.raises(importing.ImportRefused, match="not the ones imported"):
            importing.import_file(source, fmt=fmt, batch=4, state=state)
        assert Link.objects.count() == made and state.exists()
    else:
        counts = importing.import_file(source, fmt=fmt, batch=4, state=state)
        assert counts.lines > stop and not state.exists()


LINES = ['{"longurl": "https://example.com/p/1"}', '{"longurl": "https://example.com/p/2"}',
         '{"longurl": "https://EXAMPLE.com/p/1"}', '{"longurl": "ftp://example.com/"}',
         '{"longurl": 5}', '{"url": "https://example.com/"}', "[1]", "{broken", "",
         '{"longurl": "https://example.com/p/3", "expires_at": "soon"}',
         '{"longurl": "https://example.com/p/4", "expires_at": "2099-01-01T00:00:00Z"}']


@settings_(max_examples=15, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.sampled_from(LINES), min_size=1, max_size=15),
       batch=st.integers(1, 4), stop=st.integers(1, 15))
def test_any_file_imported_in_two_runs_gives_the_counts_of_one(tmp_path_factory,
                                                               transactional_db, kafka_topics,
                                                               lines, batch, stop):
    """Any file, any batch size, stopped after any line and run again: the same links and the
    same final counts as one run without a stop; every record counted once."""
    source = tmp_path_factory.mktemp("prop") / "links.jsonl"
    source.write_text("\n".join(lines) + "\n")
    state = source.with_name("links.jsonl.import-state")

    def run_in_process(**kwargs) -> importing.ImportCounts:
        return importing.import_file(source, fmt="jsonl", batch=batch, state=state, **kwargs)

    Link.objects.all().delete()
    first = run_in_process(limit=stop)
    # Stopped before the end (the state kept): the second run goes on from there.
    twice = run_in_process() if state.exists() else first
    links_twice = dict(Link.objects.values_list("longurl", "tinyurl"))
    Link.objects.all().delete()
    once = run_in_process(resume=False)
    assert twice == once
    assert once.lines == sum(1 for line in lines if line.strip())
    assert once.created + once.existing + once.refused_total == once.lines
    assert once.created == len(links_twice) == Link.objects.count()
    assert not state.exists()
