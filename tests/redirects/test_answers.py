"""The redirect's answers and the click script's reply contract, as pure functions (no server):
redirects/answers.py, clicks.click_outcome, selectors.link_target_parse, incarnation.info_run_id."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import RedisError

from redirects import answers, keys, selectors
from redirects import counting as clicks
from redirects import incarnation

# What may appear in an ASCII URL as sent (RFC 3986): unreserved and reserved characters, and
# percent-encodings in either case.
_URL_CHARS = st.sampled_from(
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~:/?#[]@!$&'()*+,;=")
    + [f"%{b:02X}" for b in range(256)] + [f"%{b:02x}" for b in range(256)])


@given(scheme=st.sampled_from(["http", "https"]), rest=st.lists(_URL_CHARS, max_size=200))
def test_location_is_an_ascii_longurl_byte_for_byte(scheme, rest):
    longurl = f"{scheme}://example.com/" + "".join(rest)
    status, headers, body = answers.redirect_answer(longurl)
    assert status == 302 and body == b""
    assert dict(headers)[b"location"] == longurl.encode()
    assert dict(headers)[b"cache-control"] == b"no-store"


def test_characters_a_header_cannot_carry_are_percent_encoded_as_django_does():
    status, headers, _ = answers.redirect_answer('https://example.com/ü/"x"{y}|')
    assert dict(headers)[b"location"] == b"https://example.com/%C3%BC/%22x%22%7By%7D%7C"


def test_the_click_script_reply_contract():
    assert clicks.click_outcome(None) is None
    assert clicks.click_outcome(b"https://example.com/x") == "https://example.com/x"
    assert clicks.click_outcome(410) == clicks.GONE == 410
    for unexpected in (1, 411, [b"https://example.com/x", 3], True):
        with pytest.raises(RedisError):
            clicks.click_outcome(unexpected)


def test_outcomes_map_to_302_410_404():
    assert answers.redirect_answer(None)[0] == 404
    assert json.loads(answers.redirect_answer(None)[2]) == {"error": "no such link"}
    status, headers, body = answers.redirect_answer(clicks.GONE)
    assert (status, json.loads(body)) == (410, {"error": "this link has expired"})
    assert dict(headers)[b"cache-control"] == b"no-store"
    assert dict(headers)[b"content-type"] == b"application/json"
    assert answers.redirect_answer("https://example.com/")[0] == 302
    assert answers.UNAVAILABLE[0] == 503 and (b"retry-after", b"1") in answers.UNAVAILABLE[1]
    status, headers, body = answers.method_not_allowed("PUT")
    assert (status, dict(headers)[b"allow"]) == (405, b"GET, HEAD")
    assert json.loads(body) == {"error": "method PUT is not allowed; use GET"}


_LONGURLS = st.builds(lambda rest: "https://example.com/" + "".join(rest),
                      st.lists(_URL_CHARS | st.just("|"), max_size=50))


@given(version=st.integers(min_value=0, max_value=2**53),
       expires_at=st.none() | st.integers(min_value=0, max_value=2**45),
       longurl=st.none() | _LONGURLS,
       now_ms=st.integers(min_value=0, max_value=2**45))
def test_a_link_value_is_parsed_in_the_same_terms_for_head(version, expires_at, longurl, now_ms):
    """HEAD's outcome of a stored value (keys.LinkValue's encoding) is what a GET answers:
    None (404) when disabled, GONE (410) once expired, else the longurl (the "|" it may hold
    included)."""
    raw = keys.link_value_encode(keys.LinkValue(version=version, expires_at=expires_at,
                                                longurl=longurl)).encode()
    outcome = selectors.link_target_parse(raw, now_ms=now_ms)
    if longurl is None:
        assert outcome is None
    elif expires_at is not None and now_ms >= expires_at:
        assert outcome == clicks.GONE
    else:
        assert outcome == longurl


def test_a_missing_or_unreadable_link_value_is_404_for_head():
    assert selectors.link_target_parse(None) is None
    # A format-1 value (the bare longurl, left by an upgrade), and other values the replica
    # never writes: no such link, as the click script answers them.
    for raw in (b"https://example.com/x", b"", b"1|", b"x|1|https://example.com/",
                b"1|soon|https://example.com/"):
        assert selectors.link_target_parse(raw) is None, raw


def test_click_keys_and_args_follow_the_script():
    keys_, args = clicks.click_keys_args("Abc1234")
    assert len(keys_) == 7 and keys_[0].endswith(":link:Abc1234")
    assert keys_[5] == keys.links_ready_key()  # a missing key answers 503 without it
    assert keys_[6] == keys.links_restarted_key()  # any link answers 503 with it
    assert args[:2] == [clicks.REPORT_EVERY, "Abc1234"]
    assert args[2] == keys.clicks_counter_prefix() and args[3] == incarnation.process_token()


def test_the_run_id_is_read_from_info_server():
    info = (b"# Server\r\nredis_version:7.0.15\r\nrun_id:0123456789abcdef0123456789abcdef01234567"
            b"\r\ntcp_port:6379\r\n")
    assert incarnation.info_run_id(info) == "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(RedisError):
        incarnation.info_run_id(b"# Server\r\nredis_version:7.0.15\r\n")
