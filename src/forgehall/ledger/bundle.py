"""Ledger bundles: a server ledger exported as one self-contained JSON file, and the
offline verification of one.

A bundle is valid JSON laid out one item per line, so a verifier streams it in constant
memory and hashes each entry's bytes as they are in the file::

    {"format":"forgehall-ledger-bundle/1","origin":"…","public_key":"…","size":N,"checkpoints":[
    "<signed checkpoint note, as a JSON string>",
    …
    ],"entries":[
    {"entry":{…},"leaf_hash":"<hex>","position":0},
    …
    ]}

Checkpoints come in increasing tree size and the last one signs the whole bundle
(``size``). Each entry line is the canonical JSON of ``{"entry", "leaf_hash",
"position"}``; ``entry`` holds the exact bytes that were hashed (the leaf), so no
re-encoding is needed to check it. A bundle that was reformatted (by a JSON tool, say)
still verifies, more slowly: its records are re-encoded canonically.

What verification checks (:func:`verify_bundle_file`, :func:`verify_bundle_lines`):
every record is at its position (none removed, duplicated or reordered); every entry's
bytes hash to its leaf hash; every checkpoint is signed by the verifier key and names the
bundle's origin; the root recomputed from the entries equals every checkpoint's root at
its size (which also proves each checkpoint consistent with the one before); nothing
lies beyond the last checkpoint. Given a checkpoint trusted earlier for the same origin
(:class:`TrustedCheckpoint`), the root at its size must equal it — a history rewritten
or rolled back behind a verifier's back shows there, and only there.

The report names the first bad position. When only a checkpoint's root disagrees (the
entries and their recorded leaf hashes were changed together), the position is the first
one that checkpoint covers beyond the previous one: the change lies in that range.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from forgehall.ledger.canonical import CanonicalJSONError, canonical_json
from forgehall.ledger.checkpoint import (
    Checkpoint,
    CheckpointError,
    SigningKey,
    VerifierKey,
    open_checkpoint,
    sign_checkpoint,
)
from forgehall.ledger.merkle import HASH_SIZE, MerkleFrontier, leaf_hash
from forgehall.ledger.verify import VerificationReport

FORMAT = "forgehall-ledger-bundle/1"
_HEADER_START = b'{"format":'
_HEADER_END = b',"checkpoints":['
_ENTRIES = b'],"entries":['
_END = b"]}"
_RECORD_START = b'{"entry":'
_LEAF_KEY = b',"leaf_hash":"'
_POSITION_KEY = b'","position":'
_HEX_DIGITS = 64
_START = len(_RECORD_START)
_KEY = len(_LEAF_KEY)
_HEX_END = _KEY + _HEX_DIGITS
_SUFFIX = _HEX_END + len(_POSITION_KEY)  # from the leaf's end to the position's digits
_SHORTEST_RECORD = _START + 2 + _SUFFIX + 2  # {"entry":{},…,"position":0}
_READ_SIZE = 4 << 20


class BundleFormatError(ValueError):
    """The file is not a ledger bundle (or of a format version this code does not know)."""


# --- writing ---------------------------------------------------------------------------


def bundle_header(origin: str, public_key: str, size: int) -> bytes:
    """The first line: format, origin, verifier key, size, and the opening checkpoints."""
    head = json.dumps(
        {"format": FORMAT, "origin": origin, "public_key": public_key, "size": size},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    return head[:-1] + _HEADER_END + b"\n"


def checkpoint_line(note: str, *, last: bool) -> bytes:
    return json.dumps(note, ensure_ascii=False).encode() + (b"\n" if last else b",\n")


ENTRIES_LINE = _ENTRIES + b"\n"
END_LINE = _END + b"\n"


def entry_record(position: int, leaf_hash_hex: str, entry: bytes) -> bytes:
    """The canonical record of one entry (``entry`` is its canonical JSON bytes)."""
    return b"".join(
        (_RECORD_START, entry, _LEAF_KEY, leaf_hash_hex.encode(), _POSITION_KEY, b"%d}" % position)
    )


def entry_line(position: int, leaf_hash_hex: str, entry: bytes, *, last: bool) -> bytes:
    return entry_record(position, leaf_hash_hex, entry) + (b"\n" if last else b",\n")


def write_bundle(
    handle: BinaryIO,
    origin: str,
    key: SigningKey,
    entries: Sequence[bytes],
    checkpoint_sizes: Iterable[int],
) -> None:
    """Write a bundle of ``entries`` (canonical JSON bytes each) with checkpoints signed
    by ``key`` at the given tree sizes (the last must be ``len(entries)``). For tools that
    hold the entries in memory; the server streams its exports from the database."""
    sizes = sorted(set(checkpoint_sizes))
    if not sizes or sizes[-1] != len(entries) or sizes[0] < 1:
        raise ValueError("checkpoint sizes are 1..len(entries) and include len(entries)")
    leaves = [leaf_hash(entry) for entry in entries]
    frontier = MerkleFrontier()
    notes = []
    for size in sizes:
        frontier.extend(leaves[frontier.size : size])
        notes.append(sign_checkpoint(Checkpoint(origin, size, frontier.root()), key))
    handle.write(bundle_header(origin, key.verifier().encode(), len(entries)))
    for number, note in enumerate(notes, start=1):
        handle.write(checkpoint_line(note, last=number == len(notes)))
    handle.write(ENTRIES_LINE)
    last = len(entries) - 1
    for position, (entry, leaf) in enumerate(zip(entries, leaves, strict=True)):
        handle.write(entry_line(position, leaf.hex(), entry, last=position == last))
    handle.write(END_LINE)


# --- verifying ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedCheckpoint:
    """A checkpoint a verifier accepted earlier: later views of the log must extend it."""

    origin: str
    public_key: str  # the verifier key it was signed with, ``<name>+<id>+<key>``
    size: int
    root: bytes
    note: str
    trusted_at: str  # when (ISO 8601), for the messages


class _Bad(Exception):
    def __init__(self, position: int, reason: str) -> None:
        super().__init__(reason)
        self.position = position
        self.reason = reason


def _strip(raw: bytes) -> tuple[bytes, bool]:
    """A line without its newline and trailing comma; whether it had the comma."""
    line = raw[:-1] if raw.endswith(b"\n") else raw
    if line.endswith(b","):
        return line[:-1], True
    return line, False


@dataclass
class _Signed:
    size: int
    root: bytes
    note: str


class _Reader:
    """A bundle as a byte stream: lines one at a time (header, checkpoints), then
    buffers of whole lines (the records: hashed in place, without a bytes object per
    line). A line cut by the end of a chunk is joined on its own, so no chunk is ever
    copied."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._data = b""
        self._pos = 0
        self._carry = b""  # the start of a line the previous chunk cut

    def _next_chunk(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        self._carry += self._data[self._pos :]
        self._data, self._pos = chunk, 0
        return True

    def _finish_carried(self) -> bytes | None:
        """The carried line completed with the current chunk (with its newline), or
        None when the stream ended first (then the carry is returned as the last line
        by the caller)."""
        while (newline := self._data.find(b"\n", self._pos)) < 0:
            if not self._next_chunk():
                return None
        line = self._carry + self._data[self._pos : newline + 1]
        self._carry, self._pos = b"", newline + 1
        return line

    def line(self) -> bytes | None:
        """The next line without its newline (None at the end)."""
        if self._carry or self._data.find(b"\n", self._pos) < 0:
            line = self._finish_carried()
            if line is None:
                last = self._carry + self._data[self._pos :]
                self._carry, self._pos = b"", len(self._data)
                return last or None
            return line[:-1]
        newline = self._data.find(b"\n", self._pos)
        line = self._data[self._pos : newline]
        self._pos = newline + 1
        return line

    def buffer(self) -> tuple[bytes, int, int] | None:
        """``(data, start, end)``: whole lines ``data[start:end]`` (the last one without
        a newline only at the end of the stream); None at the end."""
        if self._carry or self._data.find(b"\n", self._pos) < 0:
            line = self._finish_carried()
            if line is None:
                last = self._carry + self._data[self._pos :]
                self._carry, self._pos = b"", len(self._data)
                return (last, 0, len(last)) if last else None
            return line, 0, len(line)
        last_newline = self._data.rfind(b"\n", self._pos)
        start, self._pos = self._pos, last_newline + 1
        return self._data, start, last_newline + 1

    def rest_is_blank(self) -> bool:
        if self._carry.strip():
            return False
        while True:
            if self._data[self._pos :].strip():
                return False
            self._pos = len(self._data)
            if not self._next_chunk():
                return True


def _file_chunks(handle: BinaryIO) -> Iterator[bytes]:
    while chunk := handle.read(_READ_SIZE):
        yield chunk


@dataclass
class _Hashed:
    """What :func:`_hash_buffer` found in a buffer of lines."""

    digests: list[bytes]
    last_comma: bool  # whether the last record read ended with a comma
    end: int | None = None  # the offset just after the closing ]} line, if it was there
    problem: tuple[int, str] | None = None  # (position, reason) of the first bad record


def _hash_buffer(data: bytes, pos: int, stop: int, position: int, last_comma: bool) -> _Hashed:
    """The leaf hashes of the records in ``data[pos:stop]`` (whole lines), the first at
    ``position`` — the hot loop of verification, which stops at the closing ``]}`` or at
    the first bad record. Every record is checked in place: its shape, its position,
    and its entry's bytes against its recorded leaf hash."""
    digests: list[bytes] = []
    append = digests.append
    leaf_hasher = hashlib.sha256(b"\x00").copy  # the leaf prefix, hashed once
    view = memoryview(data)  # slices of it are not copies
    hexlify = binascii.hexlify
    find = data.find
    startswith = data.startswith  # compares in place, at an offset: no slice copied
    tail_format = _POSITION_KEY + b"%d}"
    while pos < stop:
        newline = find(b"\n", pos, stop)
        if newline < 0:
            newline = stop  # the last line of the stream, without a newline
        if newline - pos < _SHORTEST_RECORD:
            line = data[pos:newline]
            if line == _END:
                return _Hashed(digests, last_comma, end=newline + 1)
            return _Hashed(digests, last_comma, problem=(position, _diagnose(line, position)))
        if not last_comma:
            reason = "a record follows the last one without a comma"
            return _Hashed(digests, last_comma, problem=(position, reason))
        # {"entry":<leaf>,"leaf_hash":"<64 hex>","position":<position>}[,]
        last_comma = data[newline - 1] == 44  # ","
        close = newline - 1 if last_comma else newline
        tail = tail_format % position
        cut = close - len(tail) - _HEX_END  # so the tail, if it is there, ends at close
        if (
            not startswith(tail, cut + _HEX_END)
            or not startswith(_LEAF_KEY, cut)
            or not startswith(_RECORD_START, pos)
        ):
            line = data[pos:newline]
            return _Hashed(digests, last_comma, problem=(position, _diagnose(line, position)))
        hasher = leaf_hasher()
        hasher.update(view[pos + _START : cut])
        digest = hasher.digest()
        if not startswith(hexlify(digest), cut + _KEY):  # the 64 hex digits end at _HEX_END
            reason = (
                "the entry was changed: its bytes do not hash to the leaf hash recorded with it"
            )
            return _Hashed(digests, last_comma, problem=(position, reason))
        append(digest)
        position += 1
        pos = newline + 1
    return _Hashed(digests, last_comma)


def _declared_position(raw: bytes) -> int | None:
    """The position a record line says it has (None if it is not a record, -1 if the
    position is not a number)."""
    line = raw[:-1] if raw.endswith(b",") else raw
    cut = line.rfind(_LEAF_KEY)
    if (
        cut < 0
        or not line.startswith(_RECORD_START)
        or line[cut + _HEX_END : cut + _SUFFIX] != _POSITION_KEY
        or not line.endswith(b"}")
    ):
        return None
    digits = line[cut + _SUFFIX : -1]
    return int(digits) if digits.isdigit() else -1


def _diagnose(raw: bytes, position: int) -> str:
    """Why line ``raw`` is not the record of ``position``."""
    if raw == _END + b",":
        return "a comma after the closing ]}: the file was edited"
    if not raw:
        return "an empty line where an entry record belongs"
    declared = _declared_position(raw)
    if declared is None:
        return 'not an entry record ({"entry":…,"leaf_hash":…,"position":…}): the line was edited'
    if declared < 0:
        return "the record's position is not a number: it was edited"
    return _misplaced(declared, position)


def _misplaced(declared: int, expected: int) -> str:
    if declared > expected:
        missing = declared - expected
        span = f"{expected}" if missing == 1 else f"{expected}..{declared - 1}"
        return (
            f"the record here is position {declared}: {span} missing "
            f"({missing} {'entry' if missing == 1 else 'entries'} removed or moved)"
        )
    if declared == expected:
        return 'not an entry record ({"entry":…,"leaf_hash":…,"position":…}): the line was edited'
    return (
        f"the record here is position {declared}, which came earlier: entries were "
        "reordered or duplicated"
    )


@dataclass
class _Range:
    """What a worker found in the records starting in one byte range of a bundle."""

    first: int | None  # the declared position of its first record (None: no record)
    digests: bytes  # the leaf hashes, concatenated
    last_comma: bool
    first_is_end: bool  # the range starts with the closing ]}
    ended: bool
    trailing: bool  # something other than blank lines after the closing ]}
    problem: tuple[int, str] | None  # (index in the range, reason)


def _ranges_in_order(path: Path, entries_start: int, processes: int) -> Iterator[_Range]:
    """The records of ``path`` from ``entries_start``, hashed in byte ranges of
    :data:`_RANGE_SIZE` by ``processes - 1`` worker processes and by this one, yielded in
    file order.

    The workers are kept two ranges ahead each, in file order. This process, which also
    folds every leaf into the tree, hashes a range itself whenever the one it needs next
    is not ready — the last one nobody has taken yet — so it never waits idle while
    work remains, and takes a smaller share the more workers there are."""
    size = path.stat().st_size
    starts = range(entries_start, size, _RANGE_SIZE)
    jobs = [(start, min(start + _RANGE_SIZE, size)) for start in starts]
    others = max(processes - 1, 1)
    untaken = deque(range(len(jobs)))
    done_here: dict[int, _Range] = {}
    with ProcessPoolExecutor(max_workers=others) as pool:
        futures: dict[int, Future[_Range]] = {}

        def keep_them_busy() -> None:
            while len(futures) < 2 * others and untaken:
                index = untaken.popleft()
                futures[index] = pool.submit(_hash_range, str(path), *jobs[index], entries_start)

        keep_them_busy()
        try:
            for index in range(len(jobs)):
                future = futures.pop(index, None)
                while future is not None and not future.done() and untaken:
                    stolen = untaken.pop()
                    done_here[stolen] = _hash_range(str(path), *jobs[stolen], entries_start)
                found = future.result() if future is not None else done_here.pop(index)
                keep_them_busy()
                yield found
        finally:
            for pending in futures.values():
                pending.cancel()


def _hash_range(path: str, start: int, stop: int, entries_start: int) -> _Range:
    """Hash the records whose lines start in ``[start, stop)`` (run in a worker process).

    Positions are checked relative to the range's first record, whose declared position
    the caller checks against the records before it. The range is read once, with a
    little more to finish its last line, and hashed in place (no copy of it is made).
    """
    offset = start - 1 if start > entries_start else start  # one byte before: a line start?
    length = stop - offset
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(length + _LINE_SLACK)
        end = len(data)
        if end > length:  # more follows the range: end with the line that crosses it
            newline = data.find(b"\n", length - 1)
            if newline >= 0:
                end = newline + 1
            else:  # a line longer than the slack (rare): copy once to finish it
                data += handle.readline()
                end = len(data)
    pos = 0
    if offset < start:
        pos = data.find(b"\n", 0, length) + 1  # a line that started before is not ours
        if pos == 0:
            return _Range(None, b"", True, False, False, False, None)
    if pos >= end:
        return _Range(None, b"", True, False, False, False, None)
    newline = data.find(b"\n", pos, end)
    first_line = data[pos : newline if newline >= 0 else end]
    if first_line == _END:
        trailing = bool(data[pos + len(first_line) + 1 : end].strip())
        return _Range(None, b"", True, True, True, trailing, None)
    first = _declared_position(first_line)
    if first is None or first < 0:
        return _Range(None, b"", True, False, False, False, (0, _diagnose(first_line, 0)))
    hashed = _hash_buffer(data, pos, end, first, True)
    problem = None
    if hashed.problem is not None:
        problem = (hashed.problem[0] - first, hashed.problem[1])
    ended = hashed.end is not None
    trailing = ended and bool(data[hashed.end : end].strip())
    return _Range(
        first, b"".join(hashed.digests), hashed.last_comma, False, ended, trailing, problem
    )


class _Verifier:
    def __init__(
        self,
        name: str,
        key: VerifierKey | None,
        trusted: Mapping[str, TrustedCheckpoint] | None,
    ) -> None:
        self.name = name
        self.pinned = key
        self.trusted_by_origin = trusted or {}
        self.origin: str | None = None
        self.key: VerifierKey | None = None
        self.key_source: str | None = None
        self.signed: list[_Signed] = []
        self.frontier = MerkleFrontier()
        self.ended = False
        self.stray_comma = False  # a comma after the last record

    # -- header and checkpoints ----------------------------------------------------------

    def read_header(self, first: bytes) -> int:
        line = first[:-1] if first.endswith(b"\n") else first
        if not (line.startswith(_HEADER_START) and line.endswith(_HEADER_END)):
            raise BundleFormatError(f"{self.name}: not a ledger bundle (no bundle header line)")
        try:
            header = json.loads(line + b"]}")
        except ValueError:
            raise _Bad(0, "the header line is not JSON: the bundle was edited") from None
        if header.get("format") != FORMAT:
            raise BundleFormatError(
                f"{self.name}: bundle format {header.get('format')!r} is not {FORMAT!r}"
            )
        origin, public_key, size = (
            header.get("origin"),
            header.get("public_key"),
            header.get("size"),
        )
        if not isinstance(origin, str) or not origin:
            raise _Bad(0, "the header has no origin: the bundle was edited")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _Bad(0, "the header's size is not a number of entries: the bundle was edited")
        if not isinstance(public_key, str):
            raise _Bad(0, "the header has no public key: the bundle was edited")
        try:
            bundle_key = VerifierKey.parse(public_key)
        except CheckpointError as exc:
            raise _Bad(0, f"the header's public key does not parse: {exc}") from None
        self.origin = origin
        trusted = self.trusted_by_origin.get(origin)
        if self.pinned is not None:
            self.key, self.key_source = self.pinned, "pinned"
        elif trusted is not None:
            self.key, self.key_source = VerifierKey.parse(trusted.public_key), "remembered"
        else:
            self.key, self.key_source = bundle_key, "bundle"
        self.bundle_key = bundle_key
        return size

    def _key_text(self) -> str:
        assert self.key is not None
        source = {
            "pinned": "the key given with --public-key",
            "remembered": "the key trusted earlier for this origin",
            "bundle": "the bundle's own key",
        }[self.key_source or ""]
        return f"{source} ({self.key.name}+{self.key.key_id.hex()})"

    def read_checkpoints(self, lines: _Reader) -> tuple[int, str] | None:
        """Verify the checkpoint lines; the first problem as (position, reason)."""
        assert self.key is not None
        problem: tuple[int, str] | None = None
        previous = 0
        number = 0
        had_comma = True
        while (raw := lines.line()) is not None:
            line, comma = _strip(raw)
            if line == _ENTRIES:
                if number and had_comma:
                    problem = problem or (previous, "a comma after the last checkpoint")
                return problem
            number += 1
            if not had_comma:
                problem = problem or (previous, f"checkpoint #{number} follows one without a comma")
            had_comma = comma
            if problem is not None:
                continue  # the first problem is the one reported; keep reading to the entries
            try:
                note = json.loads(line)
                if not isinstance(note, str):
                    raise ValueError("not a string")
            except ValueError:
                problem = (previous, f"checkpoint #{number} is not a JSON string")
                continue
            try:
                checkpoint = open_checkpoint(note, self.key)
            except CheckpointError as exc:
                reason = str(exc)
                if self.key_source != "bundle" and self.bundle_key != self.key:
                    reason += (
                        f"; the bundle names another key ({self.bundle_key.name}+"
                        f"{self.bundle_key.key_id.hex()})"
                    )
                problem = (
                    previous,
                    f"checkpoint #{number} is not signed by {self._key_text()}: {reason} "
                    "(a forged or altered checkpoint)",
                )
                continue
            problem = self._check_order(checkpoint, note, number, previous)
            if problem is None:
                previous = checkpoint.size
        raise _Bad(0, "the bundle ends inside its checkpoint list (truncated)")

    def _check_order(
        self, checkpoint: Checkpoint, note: str, number: int, previous: int
    ) -> tuple[int, str] | None:
        if checkpoint.origin != self.origin:
            return (
                previous,
                f"checkpoint #{number} is for origin {checkpoint.origin!r}, not "
                f"{self.origin!r}: it belongs to another log",
            )
        if self.signed and checkpoint.size <= self.signed[-1].size:
            earlier = next((s for s in self.signed if s.size == checkpoint.size), None)
            if earlier is not None and earlier.root != checkpoint.root_hash:
                return (
                    previous,
                    f"two checkpoints sign different roots for tree size {checkpoint.size}: "
                    "the log forked (history was rewritten after it was checkpointed)",
                )
            return (
                previous,
                f"checkpoint #{number} (size {checkpoint.size}) is not larger than the one "
                "before it: checkpoints were reordered or duplicated",
            )
        self.signed.append(_Signed(checkpoint.size, checkpoint.root_hash, note))
        return None

    # -- entries -------------------------------------------------------------------------

    def _serial(self, reader: _Reader) -> Iterator[list[bytes]]:
        """Leaf hashes of the records, in lists, hashed here."""
        position, last_comma = 0, True
        while (piece := reader.buffer()) is not None:
            data, start, stop = piece
            hashed = _hash_buffer(data, start, stop, position, last_comma)
            yield hashed.digests
            position += len(hashed.digests)
            last_comma = hashed.last_comma
            if hashed.problem is not None:
                raise _Bad(*hashed.problem)
            if hashed.end is not None:
                self.stray_comma = last_comma and position > 0
                self.ended = True
                if data[hashed.end : stop].strip() or not reader.rest_is_blank():
                    raise _Bad(position, "there is more after the closing ]}: it was edited")
                return

    def _parallel(self, path: Path, entries_start: int, workers: int) -> Iterator[list[bytes]]:
        """Leaf hashes of the records, in lists, hashed by ``workers`` processes — this
        one and ``workers - 1`` others — each reading its own byte ranges of the file."""
        position, last_comma = 0, True
        for found in _ranges_in_order(path, entries_start, workers):
            if self.ended:
                if (
                    found.first is not None
                    or found.problem
                    or found.trailing
                    or (found.first_is_end)
                ):
                    raise _Bad(position, "there is more after the closing ]}: it was edited")
                continue
            if found.first_is_end:
                self.stray_comma = last_comma and position > 0
                self.ended = True
                if found.trailing:
                    raise _Bad(position, "there is more after the closing ]}: it was edited")
                continue
            if found.first is not None:
                if found.first != position:
                    raise _Bad(position, _misplaced(found.first, position))
                if not last_comma:
                    raise _Bad(position, "a record follows the last one without a comma")
            blob = found.digests
            digests = [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]
            yield digests
            position += len(digests)
            last_comma = found.last_comma
            if found.problem is not None:
                raise _Bad(position, found.problem[1])
            if found.ended:
                self.stray_comma = last_comma and position > 0
                self.ended = True
                if found.trailing:
                    raise _Bad(position, "there is more after the closing ]}: it was edited")

    # -- the whole bundle --------------------------------------------------------------

    def run(
        self,
        prelude: _Reader,
        records: Callable[[_Reader], Iterator[list[bytes]]] | None = None,
    ) -> VerificationReport:
        """Verify: the header and checkpoints from ``prelude``, then the records — from
        the same lines, or from ``records`` (the leaf hashes, in order)."""
        first = prelude.line() or b""
        try:
            size = self.read_header(first)
            checkpoint_problem = self.read_checkpoints(prelude)
            digests = (records or self._serial)(prelude)
            return self._entries(digests, size, checkpoint_problem)
        except _Bad as bad:
            return self._report(bad.position, bad.reason)

    def _entries(
        self,
        digests: Iterator[list[bytes]],
        size: int,
        checkpoint_problem: tuple[int, str] | None,
    ) -> VerificationReport:
        assert self.origin is not None
        trusted = self.trusted_by_origin.get(self.origin)
        by_size = {s.size: s for s in self.signed}
        boundaries = set(by_size)
        if checkpoint_problem is not None:
            boundaries.add(checkpoint_problem[0])
        if trusted is not None and trusted.size > 0:
            boundaries.add(trusted.size)
        previous = 0
        frontier = self.frontier
        current: list[bytes] = []
        used = 0  # of ``current``
        exhausted = False
        for boundary in sorted(boundaries):
            while frontier.size < boundary and not exhausted:
                if used == len(current):
                    following = next(digests, None)
                    if following is None:
                        exhausted = True
                        break
                    current, used = following, 0
                    continue
                take = min(boundary - frontier.size, len(current) - used)
                frontier.extend(itertools.islice(current, used, used + take))
                used += take
            if frontier.size < boundary:
                break  # the entries ended before it
            if checkpoint_problem is not None and checkpoint_problem[0] == boundary:
                raise _Bad(*checkpoint_problem)
            signed = by_size.get(boundary)
            if signed is not None:
                if frontier.root() != signed.root:
                    raise _Bad(
                        previous,
                        f"the checkpoint of size {boundary} signs another root than the "
                        f"entries give: an entry at a position in {previous}..{boundary - 1} "
                        "was changed, removed, inserted or reordered (with its leaf hash)",
                    )
                previous = boundary
            if trusted is not None and trusted.size == boundary and frontier.root() != trusted.root:
                raise _Bad(
                    0,
                    f"the first {boundary} entries do not match the checkpoint of size "
                    f"{boundary} trusted on {trusted.trusted_at}: history was rewritten "
                    f"somewhere in positions 0..{boundary - 1}",
                )
        frontier.extend(itertools.islice(current, used, None))
        for rest in digests:
            frontier.extend(rest)
        if not self.ended:
            raise _Bad(frontier.size, "the file ends before the closing ]}: it was truncated")
        return self._final(size, checkpoint_problem, trusted)

    def _final(
        self,
        size: int,
        checkpoint_problem: tuple[int, str] | None,
        trusted: TrustedCheckpoint | None,
    ) -> VerificationReport:
        count = self.frontier.size
        if checkpoint_problem is not None:  # at a position past the last entry
            raise _Bad(min(count, checkpoint_problem[0]), checkpoint_problem[1])
        latest = self.signed[-1].size if self.signed else 0
        if count < latest:
            raise _Bad(
                count,
                f"the entries end at position {count - 1}, but the checkpoint of size {latest} "
                f"signs {latest}: entries {count}..{latest - 1} were removed (truncated)",
            )
        if count > latest:
            raise _Bad(
                latest,
                f"entries from position {latest} on are covered by no signed checkpoint: "
                "they were added to the bundle",
            )
        if trusted is not None and count < trusted.size:
            raise _Bad(
                count,
                f"the log has {count} entries, below the checkpoint of size {trusted.size} "
                f"trusted on {trusted.trusted_at}: history was rolled back or truncated "
                "(or this is an older export than one verified before)",
            )
        if self.stray_comma:
            raise _Bad(count, "a comma after the last record: the file was edited")
        if size != count:
            raise _Bad(
                min(size, count),
                f"the header says {size} entries, the bundle holds {count} under its "
                "checkpoints: the header was edited",
            )
        return VerificationReport(
            path=self.name,
            kind="bundle",
            ok=True,
            entries=count,
            head=self.frontier.root().hex(),
            origin=self.origin,
            checkpoints=len(self.signed),
            checkpoint=self.signed[-1].note if self.signed else None,
            public_key=self.key.encode() if self.key else None,
            key_source=self.key_source,
        )

    def _report(self, position: int, reason: str) -> VerificationReport:
        return VerificationReport(
            path=self.name,
            kind="bundle",
            ok=False,
            entries=min(self.frontier.size, position),
            position=position,
            reason=reason,
            head=None,
            origin=self.origin,
            checkpoints=len(self.signed),
            public_key=self.key.encode() if self.key else None,
            key_source=self.key_source,
        )


def verify_bundle_lines(
    lines: Iterable[bytes],
    *,
    name: str,
    key: VerifierKey | None = None,
    trusted: Mapping[str, TrustedCheckpoint] | None = None,
) -> VerificationReport:
    """Verify a bundle given as its lines (with or without their newlines), as written by
    the exporter; see the module docstring for what is checked.

    Args:
        name: what the report calls the bundle (a path or a URL).
        key: the verifier key to check checkpoints with; default: the key remembered in
            ``trusted`` for the bundle's origin, else the bundle's own key (which proves
            the bundle consistent with itself, not who signed it).
        trusted: checkpoints trusted earlier, by origin.

    Raises:
        BundleFormatError: not a ledger bundle at all.
    """
    chunks = (line if line.endswith(b"\n") else line + b"\n" for line in lines)
    return _Verifier(name, key, trusted).run(_Reader(chunks))


def verify_bundle_stream(
    chunks: Iterable[bytes],
    *,
    name: str,
    key: VerifierKey | None = None,
    trusted: Mapping[str, TrustedCheckpoint] | None = None,
) -> VerificationReport:
    """:func:`verify_bundle_lines` for a bundle read as a byte stream in chunks of any
    size (an HTTP body, a file): the fast way."""
    return _Verifier(name, key, trusted).run(_Reader(chunks))


def _reencoded(document: Any, name: str) -> Iterator[bytes]:
    """The lines of the exporter's layout for a bundle that was parsed as a whole."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BundleFormatError(f"{name}: not a ledger bundle (format {FORMAT!r})")
    notes, records = document.get("checkpoints"), document.get("entries")
    if not isinstance(notes, list) or not isinstance(records, list):
        raise BundleFormatError(f"{name}: a bundle has checkpoints and entries lists")
    header = {k: document.get(k) for k in ("format", "origin", "public_key", "size")}
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()

    def lines() -> Iterator[bytes]:
        yield encoded[:-1] + _HEADER_END
        for number, note in enumerate(notes, start=1):
            yield json.dumps(note, ensure_ascii=False).encode() + (
                b"" if number == len(notes) else b","
            )
        yield _ENTRIES
        for number, record in enumerate(records, start=1):
            try:
                line = canonical_json(record)
            except CanonicalJSONError:
                line = b"?"  # reported as "not an entry record" at its position
            yield line + (b"" if number == len(records) else b",")
        yield _END

    return lines()


_RANGE_SIZE = 8 << 20  # bytes of records per job when verifying with several processes
PARALLEL_FROM = 64 << 20  # files at least this large are verified with several processes
_LINE_SLACK = 64 << 10  # read past a range's end to finish its last line without a copy


def _prelude(handle: BinaryIO) -> Iterator[bytes]:
    """The header and checkpoint lines, stopping right after the line that opens the
    entries (so ``handle`` is then at the first record)."""
    while line := handle.readline():
        yield line
        if line.rstrip(b"\n") == _ENTRIES:
            return


def large_file_workers() -> int:
    """Processes hashing a large bundle: one per CPU, at most 9 — this one, which also
    reads the results in order and folds the tree (hashing only while it would otherwise
    wait, see :func:`_ranges_in_order`), and up to 8 workers."""
    return min(os.cpu_count() or 1, 9)


def default_workers(path: Path) -> int:
    """Processes to verify ``path`` with: one below 64 MB, else :func:`large_file_workers`."""
    if path.stat().st_size < PARALLEL_FROM:
        return 1
    return large_file_workers()


def verify_bundle_file(
    path: Path,
    *,
    key: VerifierKey | None = None,
    trusted: Mapping[str, TrustedCheckpoint] | None = None,
    workers: int | None = None,
) -> VerificationReport:
    """Verify a bundle file (streamed when it has the exporter's layout).

    Args:
        workers: processes hashing the entries (default :func:`default_workers`): each
            reads its own byte ranges of the file; this process checks their order and
            builds the tree. Results are the same with any number.

    Raises:
        BundleFormatError: not a ledger bundle at all.
        OSError: the file cannot be read.
    """
    chosen = workers if workers is not None else default_workers(path)
    with path.open("rb") as handle:
        first = handle.readline()
        if first.startswith(_HEADER_START) and first.rstrip(b"\n").endswith(_HEADER_END):
            handle.seek(0)
            verifier = _Verifier(str(path), key, trusted)
            if chosen <= 1:
                return verifier.run(_Reader(_file_chunks(handle)))
            prelude = _Reader(_prelude(handle))

            def records(_: _Reader) -> Iterator[list[bytes]]:
                return verifier._parallel(path, handle.tell(), chosen)

            return verifier.run(prelude, records)
        handle.seek(0)
        try:
            document = json.load(handle)
        except (ValueError, UnicodeDecodeError):
            raise BundleFormatError(f"{path}: not a ledger bundle (not JSON)") from None
    return verify_bundle_lines(
        _reencoded(document, str(path)), name=str(path), key=key, trusted=trusted
    )
