"""The shortcuts taken for bulk creates give the answers of the paths they skip: the ASCII check
of a longurl's characters, the IP-literal test before ipaddress, and tinyurls made in bulk from
one draw of random bytes. No service needed."""

from __future__ import annotations

import ipaddress
import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from links.services import tinyurls_generate
from topics import longurls
from topics.records import RESERVED_TINYURLS, TINYURL_ALPHABET, TINYURL_LENGTH


@pytest.mark.parametrize("code", range(128))
def test_every_ascii_character_is_judged_as_the_generic_check_does(code):
    value = f"https://example.com/a{chr(code)}b"
    expected = longurls._is_control_or_space(chr(code))
    try:
        longurls.longurl_split(value)
        refused = None
    except longurls.LongurlError as exc:
        refused = exc.code
    assert (refused == "whitespace") == expected, (code, refused)


@given(st.one_of(st.text(), st.ip_addresses().map(str),
                 st.lists(st.integers(0, 999).map(str), min_size=1, max_size=5).map(".".join)))
def test_a_host_ipaddress_takes_is_always_tried(text):
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return
    assert longurls.may_be_ip(text)


def test_bulk_tinyurls_are_codes_of_the_alphabet_and_uniform():
    codes = tinyurls_generate(100_000)
    assert len(codes) == 100_000 and len(set(codes)) == 100_000
    assert all(len(c) == TINYURL_LENGTH and set(c) <= set(TINYURL_ALPHABET) for c in codes)
    assert not set(codes) & RESERVED_TINYURLS
    # Chi-squared over the 62 characters at each position (61 degrees of freedom): above 130
    # is a one-in-a-million event for uniform characters; a modulo bias (every byte taken,
    # so 8 characters drawn 5 times in 256 and the others 4) gives about 650 here.
    expected = len(codes) / len(TINYURL_ALPHABET)
    for position in range(TINYURL_LENGTH):
        counts = Counter(code[position] for code in codes)
        chi2 = sum((counts[c] - expected) ** 2 / expected for c in TINYURL_ALPHABET)
        assert chi2 < 130, (position, chi2)
    assert tinyurls_generate(0) == [] and len(tinyurls_generate(1)) == 1
    assert math.isclose(sum(map(len, tinyurls_generate(3))), 3 * TINYURL_LENGTH)
