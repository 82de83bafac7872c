"""Canonical JSON: the one byte form of an entry that every hash is taken over.

Keys are sorted (by code point), there is no whitespace, text is UTF-8 with non-ASCII
characters written as themselves (``ensure_ascii=False``). Only JSON's own types are
accepted: ``dict`` with ``str`` keys, ``list``/``tuple``, ``str``, ``int``, finite
``float``, ``bool`` and ``None``. Anything else is a :class:`CanonicalJSONError` rather
than a silent conversion (``json.dumps`` would turn ``{1: …}`` into ``{"1": …}`` and
write ``NaN``, which is not JSON).
"""

from __future__ import annotations

import json
import math
from typing import Any


class CanonicalJSONError(ValueError):
    """A value that has no canonical JSON form; the message names where it is."""


def _check(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise CanonicalJSONError(f"{where}: text with a lone surrogate is not UTF-8") from None
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalJSONError(f"{where}: {value!r} is not a JSON number (NaN/infinity)")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJSONError(
                    f"{where}: key {key!r} is a {type(key).__name__}; JSON keys are strings"
                )
            _check(key, f"{where} key")
            _check(item, f"{where}.{key}")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]")
        return
    raise CanonicalJSONError(f"{where}: a {type(value).__name__} is not a JSON value")


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 bytes of ``value`` (see the module docstring)."""
    _check(value, "$")
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def is_canonical(data: bytes) -> bool:
    """Whether ``data`` is exactly the canonical form of the JSON value it holds."""
    try:
        value = json.loads(data.decode("utf-8"))
        return canonical_json(value) == data
    except (UnicodeDecodeError, ValueError):
        return False
