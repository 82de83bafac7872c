"""The local hash-chained ledger: appends, every kind of tampering named by
``forgehall ledger verify``, torn lines, and concurrent writers."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from forgehall.ledger.canonical import canonical_json
from forgehall.ledger.chain import (
    GENESIS_PREV,
    LedgerError,
    append_entries,
    check_appendable,
    read_entries,
    verify_chain,
)
from tests.process import PYTHON, base_env, run_cli


def make_ledger(path: Path, count: int = 5) -> list[bytes]:
    append_entries(path, [{"gate_id": f"gate-{i}", "result": "PASS", "n": i} for i in range(count)])
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def verify_cli(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("ledger", "verify", str(path), env=base_env(tmp_path))


def test_append_chains_each_line_to_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / ".forgehall" / "evidence" / "ledger.jsonl"
    records = append_entries(path, [{"a": 1}, {"b": "é"}])
    records += append_entries(path, [{"c": None}])
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # every line ends with a newline
    lines = lines[:-1]
    assert [r.seq for r in records] == [0, 1, 2]
    assert json.loads(lines[0])["prev"] == GENESIS_PREV
    for before, line in itertools.pairwise(lines):
        assert json.loads(line)["prev"] == hashlib.sha256(before).hexdigest()
    for line in lines:
        assert canonical_json(json.loads(line)) == line
    assert read_entries(path) == [{"a": 1}, {"b": "é"}, {"c": None}]
    report = verify_chain(path)
    assert report.ok
    assert report.entries == 3
    assert report.head == hashlib.sha256(lines[-1]).hexdigest()


def test_an_intact_ledger_verifies(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path)
    done = verify_cli(path, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "OK: 5 entries, hash chain intact" in done.stdout
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert "OK: 0 entries" in verify_cli(empty, tmp_path).stdout


def tamper_value(lines: list[bytes]) -> list[bytes]:
    # One byte of line 3, still valid canonical JSON: only the chain can tell.
    changed = list(lines)
    changed[2] = changed[2].replace(b'"n":2', b'"n":7')
    return changed


def tamper_syntax(lines: list[bytes]) -> list[bytes]:
    changed = list(lines)
    changed[2] = changed[2].replace(b"{", b"[", 1)
    return changed


def delete_line(lines: list[bytes]) -> list[bytes]:
    return lines[:2] + lines[3:]


def swap_lines(lines: list[bytes]) -> list[bytes]:
    return [lines[0], lines[2], lines[1], *lines[3:]]


def duplicate_line(lines: list[bytes]) -> list[bytes]:
    return [*lines[:2], lines[1], *lines[2:]]


def duplicate_last(lines: list[bytes]) -> list[bytes]:
    return [*lines, lines[-1]]


def truncate_mid_line(lines: list[bytes]) -> list[bytes]:
    data = b"".join(lines)
    return [data[: len(data) - 10]]


def torn_append(lines: list[bytes]) -> list[bytes]:
    return [*lines, b'{"entry":{"gate_id":"half-writ']


def drop_first(lines: list[bytes]) -> list[bytes]:
    return lines[1:]


def edit_first_prev(lines: list[bytes]) -> list[bytes]:
    changed = list(lines)
    changed[0] = changed[0].replace(b'"prev":"0', b'"prev":"1', 1)
    return changed


@pytest.mark.parametrize(
    ("tamper", "line", "reason"),
    [
        (tamper_value, 3, "line 3 was changed after it was written"),
        (tamper_syntax, 3, "not JSON"),
        (delete_line, 3, "seq jumps from 1 to 3: 1 entry is missing before this line"),
        (swap_lines, 2, "seq 2 where 1 was expected, and seq 1 is on line 3: lines were"),
        (duplicate_line, 3, "a duplicate of line 2"),
        (duplicate_last, 6, "a duplicate of line 5"),
        (truncate_mid_line, 5, "incomplete line"),
        (torn_append, 6, "incomplete line"),
        (drop_first, 1, "the ledger starts at seq 1: the first 1 entries were removed"),
        (edit_first_prev, 1, "the first line's prev is not 64 zeros"),
    ],
    ids=lambda value: value.__name__ if callable(value) else None,
)
def test_tampering_is_detected_and_named(
    tmp_path: Path, tamper: object, line: int, reason: str
) -> None:
    path = tmp_path / "ledger.jsonl"
    lines = make_ledger(path)
    assert callable(tamper)
    write_lines(path, tamper(lines))
    done = verify_cli(path, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"TAMPERED: line {line}: " in done.stdout
    assert reason in done.stdout
    report = verify_chain(path)
    assert (report.ok, report.position) == (False, line)
    with pytest.raises(LedgerError, match=f"line {line}"):
        read_entries(path)


def test_a_cut_at_a_line_boundary_shows_only_as_a_different_head(tmp_path: Path) -> None:
    # What a chain cannot prove by itself: the kept head hash is what exposes the cut.
    path = tmp_path / "ledger.jsonl"
    lines = make_ledger(path)
    kept_head = verify_chain(path).head
    write_lines(path, lines[:-1])
    report = verify_chain(path)
    assert report.ok
    assert report.entries == 4
    assert report.head != kept_head


def test_json_report_and_unknown_kinds(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    write_lines(path, delete_line(make_ledger(path)))
    done = run_cli("ledger", "verify", "--json", str(path), env=base_env(tmp_path))
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert report["position"] == 3
    assert report["entries"] == 2
    bundle = tmp_path / "export.json"
    bundle.write_text("{}")
    done = run_cli("ledger", "verify", str(bundle), env=base_env(tmp_path))
    assert done.returncode == 2
    assert "not a ledger bundle" in done.stderr  # nor a local ledger (.jsonl)
    done = run_cli("ledger", "verify", str(tmp_path / "none.jsonl"), env=base_env(tmp_path))
    assert done.returncode == 2
    assert "no such file" in done.stderr


def test_a_torn_last_line_is_never_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    lines = make_ledger(path, 2)
    write_lines(path, torn_append(lines))
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="line 3 is incomplete"):
        append_entries(path, [{"after": "crash"}])
    with pytest.raises(LedgerError, match="line 3 is incomplete"):
        check_appendable(path)
    assert path.read_bytes() == before
    write_lines(path, [*lines, b"garbage\n"])
    with pytest.raises(LedgerError, match="not a ledger record"):
        append_entries(path, [{"after": "garbage"}])


def test_an_entry_without_canonical_form_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, 1)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="NaN"):
        append_entries(path, [{"ok": 1}, {"bad": float("nan")}])
    assert path.read_bytes() == before


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from forgehall.ledger.chain import append_entries
    path, writer, count, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    while not go.exists():
        time.sleep(0.001)
    for i in range(count):
        append_entries(path, [{"writer": writer, "i": i}])
    """
)


def test_concurrent_writers_produce_one_valid_chain_and_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "evidence" / "ledger.jsonl"
    go = tmp_path / "go"
    writers = [
        subprocess.Popen(
            [PYTHON, "-c", WRITER, str(path), f"w{n}", "40", str(go)], env=base_env(tmp_path)
        )
        for n in range(4)
    ]
    go.touch()
    for process in writers:
        assert process.wait(60) == 0
    report = verify_chain(path)
    assert report.ok, report.summary()
    assert report.entries == 160
    seen = sorted((e["writer"], e["i"]) for e in read_entries(path))
    assert seen == sorted((f"w{n}", i) for n in range(4) for i in range(40))
