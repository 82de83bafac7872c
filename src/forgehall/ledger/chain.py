"""The local evidence ledger: a hash-chained JSON Lines file.

``.forgehall/evidence/ledger.jsonl`` holds one record per line, each the canonical JSON
of ``{"entry": {…}, "prev": "<hex>", "seq": n}``: ``seq`` counts from 0 and ``prev`` is
the SHA-256 of the previous line's bytes (without its newline), 64 zeros on the first
line. Changing, removing, reordering or duplicating any line therefore breaks the chain
at that line or the next one. (Rewriting or cutting the *end* of the file is what a
chain alone cannot show: keep the head hash that verification prints, and trust the
server's signed checkpoints over a local file.)

Invariants of :func:`append_entries`:

- writers hold an exclusive ``flock`` on the file while they read the tail and append,
  so concurrent runs never interleave or reuse a ``seq``;
- the file is opened ``O_APPEND`` and each record is one ``write`` of a whole line
  followed by ``fsync``, so a crash leaves at most one incomplete last line;
- an incomplete (torn) or unreadable last line is reported, never silently extended.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from forgehall.ledger.canonical import canonical_json
from forgehall.ledger.verify import VerificationReport

LEDGER_PATH = Path(".forgehall") / "evidence" / "ledger.jsonl"
GENESIS_PREV = "0" * 64
_RECORD_KEYS = {"entry", "prev", "seq"}
_HEX = set("0123456789abcdef")
_CHUNK = 64 * 1024


class LedgerError(Exception):
    """The ledger cannot be appended to or read; the message says where and why."""


@dataclass(frozen=True)
class ChainRecord:
    seq: int
    prev: str
    entry: dict[str, Any]

    def encode(self) -> bytes:
        """The line's bytes, without the newline."""
        return canonical_json({"entry": self.entry, "prev": self.prev, "seq": self.seq})


def line_hash(line: bytes) -> str:
    """The hex SHA-256 the next line's ``prev`` carries."""
    return hashlib.sha256(line).hexdigest()


def _parse_record(line: bytes) -> tuple[ChainRecord | None, str | None]:
    """The record on ``line``, or why it is not one."""
    try:
        value = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except ValueError as exc:
        return None, f"not JSON ({exc.args[0].split(':')[0]})"
    if not isinstance(value, dict):
        return None, "not a JSON object"
    if set(value) != _RECORD_KEYS:
        return None, f"keys are {sorted(value)}, not entry, prev and seq"
    seq, prev, entry = value["seq"], value["prev"], value["entry"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return None, f"seq {seq!r} is not a non-negative integer"
    if not isinstance(prev, str) or len(prev) != 64 or not set(prev) <= _HEX:
        return None, "prev is not 64 lowercase hex digits"
    if not isinstance(entry, dict):
        return None, "entry is not a JSON object"
    record = ChainRecord(seq, prev, entry)
    try:
        canonical = record.encode()
    except ValueError:
        return None, "not canonical JSON (a value has no canonical form)"
    if canonical != line:
        return None, "not canonical JSON: the line was edited by hand or by another tool"
    return record, None


def _count_lines(handle: BinaryIO) -> int:
    handle.seek(0)
    count = 0
    while chunk := handle.read(_CHUNK):
        count += chunk.count(b"\n")
    return count


def _last_line(fd: int, size: int) -> bytes:
    """The bytes of the last complete line of a file that ends with a newline."""
    end = size - 1  # the final newline
    start = end
    while start > 0:
        begin = max(0, start - _CHUNK)
        chunk = os.pread(fd, start - begin, begin)
        found = chunk.rfind(b"\n")
        if found >= 0:
            start = begin + found + 1
            break
        start = begin
    return os.pread(fd, end - start, start)


def _tail(fd: int, path: Path) -> tuple[int, str]:
    """The next ``seq`` and ``prev`` for this ledger; refuses a damaged tail."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, GENESIS_PREV
    if os.pread(fd, 1, size - 1) != b"\n":
        with open(fd, "rb", closefd=False) as handle:
            number = _count_lines(handle) + 1
        raise LedgerError(
            f"{path}: line {number} is incomplete (no newline at the end of the file), "
            "probably a write cut short by a crash; check the file with `forgehall ledger "
            "verify`, then remove that partial line to record again"
        )
    line = _last_line(fd, size)
    record, problem = _parse_record(line)
    if record is None:
        raise LedgerError(
            f"{path}: the last line is not a ledger record ({problem}); "
            "run `forgehall ledger verify` on it"
        )
    return record.seq + 1, line_hash(line)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@contextlib.contextmanager
def _locked(path: Path, *, create: bool) -> Iterator[int]:
    flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
    created = create and not path.exists()
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, flags, 0o644)
    try:
        if created:
            # The new name must survive a crash too.
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def append_entries(path: Path, entries: Sequence[Mapping[str, Any]]) -> list[ChainRecord]:
    """Append entries under the file lock, one fsynced line each; returns the records.

    Raises:
        LedgerError: the last line is incomplete or not a record (nothing is written).
        CanonicalJSONError: an entry has no canonical JSON form (nothing is written).
    """
    with _locked(path, create=True) as fd:
        seq, prev = _tail(fd, path)
        records: list[ChainRecord] = []
        lines: list[bytes] = []
        for entry in entries:
            record = ChainRecord(seq, prev, dict(entry))
            line = record.encode()  # all encoded before the first write
            records.append(record)
            lines.append(line)
            seq, prev = seq + 1, line_hash(line)
        for line in lines:
            _write_all(fd, line + b"\n")
            os.fsync(fd)
        return records


def check_appendable(path: Path) -> None:
    """Raise :class:`LedgerError` now if a later append would be refused."""
    if not path.exists():
        return
    with _locked(path, create=False) as fd:
        _tail(fd, path)


def _classify_seq(path: Path, number: int, seq: int, expected: int) -> str:
    """Why line ``number`` carries ``seq`` where ``expected`` belonged (lines before it
    verified, so line ``k`` holds seq ``k - 1``)."""
    with path.open("rb") as handle:
        lines = enumerate(handle, start=1)
        if seq < expected:
            earlier = seq + 1
            original = b""
            for line_number, raw in lines:
                if line_number == earlier:
                    original = raw
                if line_number == number:
                    if raw.rstrip(b"\n") == original.rstrip(b"\n"):
                        return f"a duplicate of line {earlier} (seq {seq} again)"
                    return (
                        f"seq {seq} where {expected} was expected: line {earlier} already "
                        "has that seq (lines reordered or duplicated)"
                    )
        for line_number, raw in lines:
            if line_number <= number:
                continue
            record, _ = _parse_record(raw.rstrip(b"\n"))
            if record is not None and record.seq == expected:
                return (
                    f"seq {seq} where {expected} was expected, and seq {expected} is on "
                    f"line {line_number}: lines were reordered"
                )
    missing = seq - expected
    if expected == 0:
        return f"the ledger starts at seq {seq}: the first {missing} entries were removed"
    return (
        f"seq jumps from {expected - 1} to {seq}: {missing} "
        f"{'entry is' if missing == 1 else 'entries are'} missing before this line "
        "(removed), or this line's seq was edited"
    )


def _verify_open(handle: BinaryIO, path: Path) -> VerificationReport:
    name = str(path)
    expected, prev = 0, GENESIS_PREV
    head: str | None = None  # the hash of the last line that verified
    before: str | None = None  # and of the one before it
    for number, raw in enumerate(handle, start=1):
        if not raw.endswith(b"\n"):
            return VerificationReport.bad(
                name,
                "chain",
                expected,
                number,
                f"incomplete line ({len(raw)} bytes, no newline): the file was "
                "truncated mid-line, or a write was cut short by a crash",
                head,
            )
        line = raw[:-1]
        record, problem = _parse_record(line)
        if record is None:
            return VerificationReport.bad(name, "chain", expected, number, str(problem), head)
        if record.seq != expected:
            reason = _classify_seq(path, number, record.seq, expected)
            return VerificationReport.bad(name, "chain", expected, number, reason, head)
        if record.prev != prev:
            if number == 1:
                reason = "the first line's prev is not 64 zeros: it was edited"
                return VerificationReport.bad(name, "chain", 0, 1, reason, None)
            return VerificationReport.bad(
                name,
                "chain",
                expected - 1,
                number - 1,
                f"its SHA-256 is not the prev recorded on line {number}: line "
                f"{number - 1} was changed after it was written (or line {number}'s "
                "prev was)",
                before,
            )
        before, head = head, line_hash(line)
        prev = head
        expected += 1
    return VerificationReport.good(name, "chain", expected, head)


@contextlib.contextmanager
def _shared(path: Path) -> Iterator[BinaryIO]:
    # A shared lock waits out a writer, so a line being appended is never seen half-done.
    with path.open("rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        yield handle


def verify_chain(path: Path) -> VerificationReport:
    """Check every line of a local ledger; the report names the first bad line.

    Raises:
        OSError: the file cannot be read.
    """
    with _shared(path) as handle:
        return _verify_open(handle, path)


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The entries of a ledger that verifies, oldest first; none when there is no file.

    Raises:
        LedgerError: the ledger does not verify (the message is the report's).
    """
    if not path.exists():
        return []
    with _shared(path) as handle:
        report = _verify_open(handle, path)
        if not report.ok:
            raise LedgerError(f"{path}: {report.summary()}")
        handle.seek(0)
        entries: list[dict[str, Any]] = []
        for raw in handle:
            record, _ = _parse_record(raw[:-1])
            if record is None:  # verified above, under the same lock
                raise LedgerError(f"{path}: changed while it was read")
            entries.append(record.entry)
        return entries
