"""A JSON request body, read within its bound and parsed: the one reader of PUT /create
(links/create_checks.py, for both of its paths) and PUT /create/bulk (links/bulk.py). No HTTP
framework here: the caller gives the Content-Length header and a way to read the body, and
answers a BodyRefused in its own way (status, reason and message are the same for both).

What Python's json refuses beyond JSON's grammar, each a 400 `json`:
  * an integer of more digits than Python converts (sys.get_int_max_str_digits(), 4,300 by
    default: CVE-2020-10735), a ValueError. A bulk call (`elements_most`) answers the array's
    element that holds one alone (INTEGER_TOO_LONG) rather than refusing every item;
  * nesting deeper than Python's recursion limit (1,000 frames by default, the caller's own
    stack included), a RecursionError: the whole body is refused, for a bulk call too, since
    json stops there and finding where that element ends would take a parser of our own (in
    Python, over up to 4 MiB of brackets).
"""

from __future__ import annotations

import json
from collections.abc import Callable


class BodyRefused(Exception):
    """The body cannot be used: `status` (400 or 413), `reason` (a metric label: "body" or
    "json") and str() the message for the client."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class _IntegerTooLong:
    def __repr__(self) -> str:
        return "INTEGER_TOO_LONG"


# An element of a bulk body that holds an integer json cannot convert (see json_body).
INTEGER_TOO_LONG = _IntegerTooLong()


def json_body(content_length: str | None, read: Callable[[], bytes], *, limit: int,
              too_large_status: int, too_large: str, empty: str,
              elements_most: int | None = None) -> object:
    """The parsed body. `read()` is called only if Content-Length (None if absent) does not
    already exceed `limit`, and may return more than the limit (a chunked body): past `limit`
    bytes, BodyRefused(too_large_status, "body", too_large); an empty or blank body,
    BodyRefused(400, "body", empty); not JSON this service parses, BodyRefused(400, "json", ...).

    With `elements_most` (a body that should be an array of at most that many elements, each
    answered alone): an element that holds an integer too long to convert is INTEGER_TOO_LONG
    instead, the other elements as they are. The body is then parsed a second time, only when
    the first parse met such an integer: no other body pays. Such a body costs up to 4 times the
    CPU of one parse (a Python call for each integer; measured on 4 MiB: 2 million integers,
    0.32 s against 0.083 s; a million one-integer arrays, 1.0 s against 0.52 s; and 10,000
    items of /create in 1 MB, 7 ms against 2 ms); an array longer than `elements_most` is
    returned unmarked (the caller refuses it whole) rather than walked.
    """
    try:
        length = int(content_length or 0)
    except ValueError:
        raise BodyRefused(400, "body", "invalid Content-Length") from None
    if length > limit:
        raise BodyRefused(too_large_status, "body", too_large)
    body = read()
    if len(body) > limit:  # chunked bodies carry no Content-Length
        raise BodyRefused(too_large_status, "body", too_large)
    if not body.strip():
        raise BodyRefused(400, "body", empty)
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise BodyRefused(400, "json", "request body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BodyRefused(400, "json", f"request body is not valid JSON: {exc.msg}") from None
    except ValueError as exc:  # an integer past Python's limit on digits
        if elements_most is not None:
            return _elements_marked(body, elements_most)
        raise _unaccepted(exc) from None
    except RecursionError as exc:
        raise _unaccepted(exc) from None


def _unaccepted(exc: Exception) -> BodyRefused:
    return BodyRefused(400, "json", f"request body is not JSON this service accepts: {exc}"[:200])


def _int_or_marker(text: str) -> int | _IntegerTooLong:
    try:
        return int(text)
    except ValueError:
        return INTEGER_TOO_LONG


def _elements_marked(body: bytes, most: int) -> object:
    try:
        payload = json.loads(body, parse_int=_int_or_marker)
    except json.JSONDecodeError as exc:  # past the integer, the body is not JSON after all
        raise BodyRefused(400, "json", f"request body is not valid JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise _unaccepted(exc) from None
    if not isinstance(payload, list) or len(payload) > most:
        return payload  # the caller refuses it whole, for what it is
    return [INTEGER_TOO_LONG if element is INTEGER_TOO_LONG
            or isinstance(element, (dict, list)) and _holds_marker(element) else element
            for element in payload]


def _holds_marker(value: object) -> bool:
    """Whether INTEGER_TOO_LONG is anywhere in `value`; a loop, not recursion: `value` may be
    nested nearly as deep as the recursion limit allows."""
    stack = [value]
    while stack:
        item = stack.pop()
        if item is INTEGER_TOO_LONG:
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
