"""The redirect's answers and the click script's reply contract, as pure functions (no server):
redirects/answers.py, clicks.click_outcome, selectors.link_target_parse."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import RedisError

from redirects import answers, clicks, selectors

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
    assert answers.redirect_answer(clicks.GONE)[0] == 410
    assert answers.redirect_answer("https://example.com/")[0] == 302
    assert answers.UNAVAILABLE[0] == 503 and (b"retry-after", b"1") in answers.UNAVAILABLE[1]
    status, headers, body = answers.method_not_allowed("PUT")
    assert (status, dict(headers)[b"allow"]) == (405, b"GET, HEAD")
    assert json.loads(body) == {"error": "method PUT is not allowed; use GET"}


def test_a_link_value_is_parsed_in_the_same_terms_for_head():
    assert selectors.link_target_parse(None) is None
    assert selectors.link_target_parse(b"https://example.com/x") == "https://example.com/x"


def test_click_keys_and_args_follow_the_script():
    keys_, args = clicks.click_keys_args("Abc1234")
    assert len(keys_) == 5 and keys_[0].endswith(":link:Abc1234")
    assert args == [clicks.REPORT_EVERY, "Abc1234"]
