"""Strict JSON decoding of request bodies."""

from __future__ import annotations

import json

import pytest
from d2.server.errors import ApiError
from d2.server.strictjson import JSONError, decode_json, loads_strict


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b'{"a": NaN}', "NaN"),
        (b"[Infinity]", "Infinity"),
        (b"[" * 100 + b"]" * 100, "nested deeper"),
        (b'"\xff"', "not UTF-8"),
        (b"{", "Expecting"),
        (b"[1e400]", "out of range"),
        (b'{"s": "\\ud800"}', "surrogate"),
        (b'{"\\udfff": 1}', "surrogate"),
        (b"[" + b"1" * 5000 + b"]", "digits"),
    ],
)
def test_strict_json_refuses_what_lenient_parsers_accept(data: bytes, reason: str) -> None:
    with pytest.raises(JSONError, match=reason):
        loads_strict(data)


def test_escaped_surrogate_pairs_are_fine() -> None:
    assert loads_strict(b'["\\ud83d\\ude00"]') == ["\U0001f600"]


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    assert loads_strict(json.dumps({"s": "[" * 500 + '\\"'}).encode()) == {"s": "[" * 500 + '\\"'}


def test_a_body_that_is_not_json_is_a_400_naming_the_reason() -> None:
    with pytest.raises(ApiError) as excinfo:
        decode_json(b'{"a": 1, "a": 2}')
    assert (excinfo.value.status, excinfo.value.detail) == (400, "invalid_json")
    assert excinfo.value.extra["errors"] == ["<root>: duplicate key 'a'"]
