"""Canonical JSON: one byte form per value, and a clear refusal of what JSON cannot hold."""

from __future__ import annotations

import pytest

from forgehall.ledger.canonical import CanonicalJSONError, canonical_json, is_canonical


def test_keys_are_sorted_without_whitespace_and_text_is_utf8() -> None:
    value = {"b": [1, 2.5, None, True], "a": {"z": "é", "y": "日本"}, "c": ""}
    data = canonical_json(value)
    assert data == '{"a":{"y":"日本","z":"é"},"b":[1,2.5,null,true],"c":""}'.encode()
    assert (
        canonical_json({"a": {"z": "é", "y": "日本"}, "c": "", "b": (1, 2.5, None, True)}) == data
    )
    assert is_canonical(data)


def test_non_canonical_forms_are_recognised() -> None:
    assert not is_canonical(b'{"b":1,"a":2}')  # unsorted
    assert not is_canonical(b'{"a": 2}')  # whitespace
    assert not is_canonical(b'{"a":"\\u00e9"}')  # escaped non-ASCII
    assert not is_canonical(b'{"a":1,"a":1}')  # duplicate key
    assert not is_canonical(b'{"a":NaN}')
    assert not is_canonical(b"\xff")
    assert not is_canonical(b"{")


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"x": float("nan")}, "$.x"),
        ({"x": [1, float("inf")]}, "$.x[1]"),
        ({"x": -float("inf")}, "$.x"),
        ({1: "a"}, "key 1"),
        ({"x": {("a",): 1}}, "$.x"),
        ({"x": {1, 2}}, "set"),
        ({"x": b"bytes"}, "bytes"),
        ({"x": "\ud800"}, "surrogate"),
    ],
)
def test_values_without_a_canonical_form_are_refused(value: object, where: str) -> None:
    with pytest.raises(CanonicalJSONError, match=where.replace("$", r"\$").replace("[", r"\[")):
        canonical_json(value)
