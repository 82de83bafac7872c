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
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
from forgehall.ledger.merkle import MerkleFrontier, leaf_hash
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
        self.last_comma = True  # whether the last record line ended with a comma
        self.stray_comma = False

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

    def read_checkpoints(self, lines: Iterator[bytes]) -> tuple[int, str] | None:
        """Verify the checkpoint lines; the first problem as (position, reason)."""
        assert self.key is not None
        problem: tuple[int, str] | None = None
        previous = 0
        number = 0
        had_comma = True
        for raw in lines:
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

    def leaves(self, lines: Iterator[bytes], count: int | None) -> Iterator[bytes]:
        """Leaf hashes of the next ``count`` records (all, for None) — the hot loop."""
        sha256 = hashlib.sha256
        hexlify = binascii.hexlify
        position = self.frontier.size
        start_len = len(_RECORD_START)
        key_len = len(_LEAF_KEY)
        after_hex = key_len + _HEX_DIGITS
        after_pos_key = after_hex + len(_POSITION_KEY)
        for raw in itertools.islice(lines, count):
            end = len(raw) - 1 if raw[-1:] == b"\n" else len(raw)
            if end == 2 and raw.startswith(_END):
                if self.last_comma and position > 0:
                    # Not valid JSON; reported unless something worse explains it (records
                    # missing after this one: the writer expected more).
                    self.stray_comma = True
                self.ended = True
                return
            if not self.last_comma and position > 0:
                raise _Bad(position, "a record follows the last one without a comma")
            comma = raw[end - 1 : end] == b","
            if comma:
                end -= 1
            self.last_comma = comma
            cut = raw.rfind(_LEAF_KEY, 0, end)
            if (
                cut < 0
                or not raw.startswith(_RECORD_START)
                or raw[cut + after_hex : cut + after_pos_key] != _POSITION_KEY
                or raw[end - 1 : end] != b"}"
            ):
                raise _Bad(position, self._not_a_record(raw[:end]))
            if raw[cut + after_pos_key : end - 1] != b"%d" % position:
                raise _Bad(position, self._misplaced(raw[cut + after_pos_key : end - 1], position))
            digest = sha256(b"\x00" + raw[start_len:cut]).digest()
            if hexlify(digest) != raw[cut + key_len : cut + after_hex]:
                raise _Bad(
                    position,
                    "the entry was changed: its bytes do not hash to the leaf hash recorded "
                    "with it",
                )
            position += 1
            yield digest

    def _not_a_record(self, line: bytes) -> str:
        if not line:
            return "an empty line where an entry record belongs"
        return 'not an entry record ({"entry":…,"leaf_hash":…,"position":…}): the line was edited'

    def _misplaced(self, found: bytes, expected: int) -> str:
        try:
            position = int(found)
        except ValueError:
            return "the record's position is not a number: it was edited"
        if position > expected:
            missing = position - expected
            span = f"{expected}" if missing == 1 else f"{expected}..{position - 1}"
            return (
                f"the record here is position {position}: {span} missing "
                f"({missing} {'entry' if missing == 1 else 'entries'} removed or moved)"
            )
        return (
            f"the record here is position {position}, which came earlier: entries were "
            "reordered or duplicated"
        )

    # -- the whole bundle --------------------------------------------------------------

    def run(self, lines: Iterable[bytes]) -> VerificationReport:
        stream = iter(lines)
        first = next(stream, b"")
        try:
            size = self.read_header(first)
            checkpoint_problem = self.read_checkpoints(stream)
            return self._entries(stream, size, checkpoint_problem)
        except _Bad as bad:
            return self._report(bad.position, bad.reason)

    def _entries(
        self, stream: Iterator[bytes], size: int, checkpoint_problem: tuple[int, str] | None
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
        for boundary in sorted(boundaries):
            frontier = self.frontier
            frontier.extend(self.leaves(stream, boundary - frontier.size))
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
        if not self.ended:
            self.frontier.extend(self.leaves(stream, None))
        if not self.ended:
            raise _Bad(self.frontier.size, "the file ends before the closing ]}: it was truncated")
        if any(line.strip() for line in stream):
            raise _Bad(self.frontier.size, "there is more after the closing ]}: it was edited")
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
    """Verify a bundle given as its lines (each with its newline), as written by the
    exporter; see the module docstring for what is checked.

    Args:
        name: what the report calls the bundle (a path or a URL).
        key: the verifier key to check checkpoints with; default: the key remembered in
            ``trusted`` for the bundle's origin, else the bundle's own key (which proves
            the bundle consistent with itself, not who signed it).
        trusted: checkpoints trusted earlier, by origin.

    Raises:
        BundleFormatError: not a ledger bundle at all.
    """
    return _Verifier(name, key, trusted).run(lines)


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
        yield encoded[:-1] + _HEADER_END + b"\n"
        for number, note in enumerate(notes, start=1):
            yield json.dumps(note, ensure_ascii=False).encode() + (
                b"\n" if number == len(notes) else b",\n"
            )
        yield ENTRIES_LINE
        for number, record in enumerate(records, start=1):
            try:
                line = canonical_json(record)
            except CanonicalJSONError:
                line = b"?"  # reported as "not an entry record" at its position
            yield line + (b"\n" if number == len(records) else b",\n")
        yield END_LINE

    return lines()


def verify_bundle_file(
    path: Path,
    *,
    key: VerifierKey | None = None,
    trusted: Mapping[str, TrustedCheckpoint] | None = None,
) -> VerificationReport:
    """Verify a bundle file (streamed when it has the exporter's layout).

    Raises:
        BundleFormatError: not a ledger bundle at all.
        OSError: the file cannot be read.
    """
    with path.open("rb") as handle:
        first = handle.readline()
        if first.startswith(_HEADER_START) and first.rstrip(b"\n").endswith(_HEADER_END):
            return verify_bundle_lines(
                itertools.chain((first,), handle), name=str(path), key=key, trusted=trusted
            )
        handle.seek(0)
        try:
            document = json.load(handle)
        except (ValueError, UnicodeDecodeError):
            raise BundleFormatError(f"{path}: not a ledger bundle (not JSON)") from None
    return verify_bundle_lines(
        _reencoded(document, str(path)), name=str(path), key=key, trusted=trusted
    )
