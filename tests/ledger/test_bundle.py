"""Bundles: the exporter's layout verifies, and each kind of tampering is found at the
first bad position and named — whether only an entry changed, or an entry together with
everything an attacker could recompute without the signing key. Every file check runs
in this process and with worker processes reading small byte ranges (so records missing,
moved or damaged at range edges are covered too): the reports must be the same."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from forgehall.ledger import bundle as bundle_module
from forgehall.ledger.bundle import (
    BundleFormatError,
    TrustedCheckpoint,
    entry_line,
    write_bundle,
)
from forgehall.ledger.canonical import canonical_json
from forgehall.ledger.checkpoint import Checkpoint, SigningKey, open_checkpoint, sign_checkpoint
from forgehall.ledger.merkle import MerkleFrontier, leaf_hash
from forgehall.ledger.verify import VerificationReport

ORIGIN = "forgehall.example/ledger/team"
KEY = SigningKey.generate("forgehall.example")
OTHER_KEY = SigningKey.generate("forgehall.example")
ENTRIES = [
    canonical_json({"gate_id": f"g{i}", "result": "PASS", "text": "é" * i}) for i in range(20)
]
SIZES = (3, 8, 15, 20)


def build(path: Path, entries: list[bytes] = ENTRIES, sizes: tuple[int, ...] = SIZES) -> Path:
    with path.open("wb") as handle:
        write_bundle(handle, ORIGIN, KEY, entries, sizes)
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def first_entry_line(lines: list[bytes]) -> int:
    return lines.index(b'],"entries":[\n') + 1


def rewrite(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def record(line: bytes) -> dict[str, object]:
    value: dict[str, object] = json.loads(line.rstrip(b",\n"))
    return value


@pytest.fixture(params=[1, 2, 3], ids=["serial", "workers", "workers-long-lines"])
def workers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Serial; two processes (this one hashes ranges while it would wait);
    three, with lines longer than the read-ahead that finishes a range's last line."""
    count: int = request.param
    if count > 1:
        monkeypatch.setattr(bundle_module, "_RANGE_SIZE", 700)  # about two records a range
    if count > 2:
        monkeypatch.setattr(bundle_module, "_LINE_SLACK", 10)
    return count


@pytest.fixture
def verify_bundle_file(workers: int):  # type: ignore[no-untyped-def]
    def verify(path: Path, **kwargs: object) -> VerificationReport:
        return bundle_module.verify_bundle_file(path, workers=workers, **kwargs)  # type: ignore[arg-type]

    return verify


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return build(tmp_path / "bundle.json")


def test_a_bundle_verifies_and_is_plain_json(bundle: Path, verify_bundle_file: Any) -> None:
    report = verify_bundle_file(bundle)
    assert report.ok, report.reason
    assert (report.entries, report.checkpoints, report.origin) == (20, 4, ORIGIN)
    assert report.key_source == "bundle"
    frontier = MerkleFrontier()
    frontier.extend(leaf_hash(e) for e in ENTRIES)
    assert report.head == frontier.root().hex()
    assert report.checkpoint is not None
    assert open_checkpoint(report.checkpoint, KEY.verifier()).size == 20
    document = json.loads(bundle.read_bytes())
    assert [canonical_json(r["entry"]) for r in document["entries"]] == ENTRIES
    assert [r["position"] for r in document["entries"]] == list(range(20))
    assert document["public_key"] == KEY.verifier().encode()
    assert report.summary().startswith("OK: 20 entries, 4 signed checkpoints verified")


def test_a_reformatted_bundle_verifies_the_slow_way(
    bundle: Path, tmp_path: Path, verify_bundle_file: Any
) -> None:
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(bundle.read_bytes()), indent=2))
    report = verify_bundle_file(pretty)
    assert report.ok, report.reason
    assert report.head == verify_bundle_file(bundle).head
    document = json.loads(pretty.read_text())
    document["entries"][4]["entry"]["result"] = "FAIL"
    pretty.write_text(json.dumps(document, indent=2))
    bad = verify_bundle_file(pretty)
    assert (bad.ok, bad.position) == (False, 4)
    assert "entry was changed" in (bad.reason or "")


def test_an_empty_log_verifies(tmp_path: Path, verify_bundle_file: Any) -> None:
    path = tmp_path / "empty.json"
    path.write_bytes(
        b'{"format":"forgehall-ledger-bundle/1","origin":"o","public_key":"'
        + KEY.verifier().encode().encode()
        + b'","size":0,"checkpoints":[\n],"entries":[\n]}\n'
    )
    report = verify_bundle_file(path)
    assert report.ok, report.reason
    assert report.entries == 0


def test_one_changed_byte_is_named_at_its_position(bundle: Path, verify_bundle_file: Any) -> None:
    lines = lines_of(bundle)
    at = first_entry_line(lines) + 9
    lines[at] = lines[at].replace(b'"PASS"', b'"PASs"')
    report = verify_bundle_file(rewrite(bundle, lines))
    assert (report.ok, report.position) == (False, 9)
    assert "entry was changed" in (report.reason or "")
    assert report.summary().startswith("TAMPERED: position 9:")


def test_a_change_with_a_recomputed_leaf_hash_is_caught_by_the_checkpoint(
    bundle: Path, verify_bundle_file: Any
) -> None:
    lines = lines_of(bundle)
    at = first_entry_line(lines) + 9
    changed = ENTRIES[9].replace(b'"PASS"', b'"FAIL"')
    lines[at] = entry_line(9, leaf_hash(changed).hex(), changed, last=False)
    report = verify_bundle_file(rewrite(bundle, lines))
    # 9 lies between the checkpoints of sizes 8 and 15
    assert (report.ok, report.position) == (False, 8)
    assert "checkpoint of size 15 signs another root" in (report.reason or "")


def test_a_deleted_entry_is_named(bundle: Path, verify_bundle_file: Any) -> None:
    lines = lines_of(bundle)
    del lines[first_entry_line(lines) + 5]
    report = verify_bundle_file(rewrite(bundle, lines))
    assert (report.ok, report.position) == (False, 5)
    assert "position 6: 5 missing (1 entry removed" in (report.reason or "")


def test_swapped_entries_are_named(bundle: Path, verify_bundle_file: Any) -> None:
    lines = lines_of(bundle)
    at = first_entry_line(lines) + 5
    lines[at], lines[at + 1] = lines[at + 1], lines[at]
    report = verify_bundle_file(rewrite(bundle, lines))
    assert (report.ok, report.position) == (False, 5)
    assert "position 6" in (report.reason or "")
    # renumbered to hide it: the checkpoint covering 5..6 disagrees
    lines = lines_of(build(bundle))
    a, b = record(lines[at]), record(lines[at + 1])
    entry_a, entry_b = canonical_json(a["entry"]), canonical_json(b["entry"])
    lines[at] = entry_line(5, leaf_hash(entry_b).hex(), entry_b, last=False)
    lines[at + 1] = entry_line(6, leaf_hash(entry_a).hex(), entry_a, last=False)
    report = verify_bundle_file(rewrite(bundle, lines))
    assert (report.ok, report.position) == (False, 3)
    assert "checkpoint of size 8 signs another root" in (report.reason or "")


def test_a_truncated_log_is_named(bundle: Path, verify_bundle_file: Any) -> None:
    lines = lines_of(bundle)
    start = first_entry_line(lines)
    # the last four entries cut, the file closed again neatly
    kept = [*lines[: start + 16], lines[-1]]
    kept[start + 15] = kept[start + 15].replace(b"},\n", b"}\n")
    report = verify_bundle_file(rewrite(bundle, kept))
    assert (report.ok, report.position) == (False, 16)
    assert "entries 16..19 were removed (truncated)" in (report.reason or "")
    # cut mid-file
    report = verify_bundle_file(rewrite(bundle, lines[: start + 12]))
    assert (report.ok, report.position) == (False, 12)
    # records missing before a neat end (what a server missing rows exports)
    report = verify_bundle_file(rewrite(bundle, [*lines[: start + 16], lines[-1]]))
    assert (report.ok, report.position) == (False, 16)
    assert "entries 16..19 were removed (truncated)" in (report.reason or "")
    # only a stray comma
    stray = list(lines)
    stray[-2] = stray[-2].replace(b"}\n", b"},\n")
    report = verify_bundle_file(rewrite(bundle, stray))
    assert (report.ok, report.position) == (False, 20)
    assert "a comma after the last record" in (report.reason or "")


def test_a_forged_checkpoint_is_named(bundle: Path, verify_bundle_file: Any) -> None:
    lines = lines_of(bundle)
    frontier = MerkleFrontier()
    frontier.extend(leaf_hash(e) for e in ENTRIES[:8])
    forged = sign_checkpoint(Checkpoint(ORIGIN, 8, frontier.root()), OTHER_KEY)
    lines[2] = json.dumps(forged).encode() + b",\n"  # the checkpoint of size 8
    report = verify_bundle_file(rewrite(bundle, lines))
    assert (report.ok, report.position) == (False, 3)
    assert "checkpoint #2 is not signed by the bundle's own key" in (report.reason or "")


def test_a_bundle_re_signed_with_another_key_fails_against_the_pinned_key(
    tmp_path: Path, verify_bundle_file: Any
) -> None:
    path = tmp_path / "other.json"
    with path.open("wb") as handle:
        write_bundle(handle, ORIGIN, OTHER_KEY, ENTRIES, SIZES)
    assert verify_bundle_file(path).ok  # consistent with itself …
    report = verify_bundle_file(path, key=KEY.verifier())  # … but not signed by the instance
    assert (report.ok, report.position) == (False, 0)
    assert "not signed by the key given with --public-key" in (report.reason or "")
    assert "the bundle names another key" in (report.reason or "")


def trusted_at(size: int, entries: list[bytes] = ENTRIES) -> TrustedCheckpoint:
    frontier = MerkleFrontier()
    frontier.extend(leaf_hash(e) for e in entries[:size])
    note = sign_checkpoint(Checkpoint(ORIGIN, size, frontier.root()), KEY)
    return TrustedCheckpoint(
        ORIGIN, KEY.verifier().encode(), size, frontier.root(), note, "2031-01-01T00:00:00Z"
    )


def test_a_trusted_checkpoint_catches_a_rollback_and_a_rewrite(
    tmp_path: Path, verify_bundle_file: Any
) -> None:
    shorter = build(tmp_path / "short.json", ENTRIES[:12], (3, 8, 12))
    assert verify_bundle_file(shorter).ok  # on its own it is a fine, shorter log
    report = verify_bundle_file(shorter, trusted={ORIGIN: trusted_at(15)})
    assert (report.ok, report.position) == (False, 12)
    assert "below the checkpoint of size 15 trusted on 2031-01-01" in (report.reason or "")

    rewritten = [*ENTRIES[:4], canonical_json({"gate_id": "x"}), *ENTRIES[5:]]
    other = build(tmp_path / "rewritten.json", rewritten, SIZES)
    assert verify_bundle_file(other).ok
    report = verify_bundle_file(other, trusted={ORIGIN: trusted_at(12)})
    assert (report.ok, report.position) == (False, 0)
    assert "history was rewritten somewhere in positions 0..11" in (report.reason or "")
    assert verify_bundle_file(build(tmp_path / "ok.json"), trusted={ORIGIN: trusted_at(12)}).ok


def test_entries_beyond_the_last_checkpoint_and_header_edits(
    bundle: Path, verify_bundle_file: Any
) -> None:
    lines = lines_of(bundle)
    extra = canonical_json({"gate_id": "late"})
    lines[-2] = lines[-2].replace(b"}\n", b"},\n")
    lines.insert(-1, entry_line(20, leaf_hash(extra).hex(), extra, last=True))
    report = verify_bundle_file(rewrite(bundle, lines))
    assert (report.ok, report.position) == (False, 20)
    assert "covered by no signed checkpoint" in (report.reason or "")

    lines = lines_of(build(bundle))
    lines[0] = lines[0].replace(b'"size":20', b'"size":25')
    report = verify_bundle_file(rewrite(bundle, lines))
    assert (report.ok, report.position) == (False, 20)
    assert "header was edited" in (report.reason or "")


def test_what_is_not_a_bundle(tmp_path: Path, verify_bundle_file: Any) -> None:
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(BundleFormatError):
        verify_bundle_file(path)
    path.write_text("not json")
    with pytest.raises(BundleFormatError):
        verify_bundle_file(path)
    path.write_bytes(b'{"format":"forgehall-ledger-bundle/9","checkpoints":[\n],"entries":[\n]}\n')
    with pytest.raises(BundleFormatError, match="is not 'forgehall-ledger-bundle/1'"):
        verify_bundle_file(path)


def test_write_bundle_refuses_checkpoints_that_do_not_cover_the_entries() -> None:
    with pytest.raises(ValueError, match="checkpoint sizes"):
        write_bundle(io.BytesIO(), ORIGIN, KEY, ENTRIES, (3, 8))


@pytest.mark.parametrize("chunk", [1, 5, 977, 1 << 20])
def test_a_bundle_streamed_in_chunks_of_any_size_reads_the_same(bundle: Path, chunk: int) -> None:
    """As `verify --server` reads an HTTP body: lines cut anywhere by the chunks."""
    data = bundle.read_bytes()

    def stream(raw: bytes) -> list[bytes]:
        return [raw[i : i + chunk] for i in range(0, len(raw), chunk)]

    good = bundle_module.verify_bundle_stream(stream(data), name="s")
    assert good == bundle_module.verify_bundle_file(bundle, workers=1).__class__(
        **{**good.as_dict(), "path": "s"}
    )
    assert good.ok
    lines = data.splitlines(keepends=True)
    at = first_entry_line(lines) + 13
    lines[at] = lines[at].replace(b'"PASS"', b'"PASs"')
    bad = bundle_module.verify_bundle_stream(stream(b"".join(lines)), name="s")
    assert (bad.ok, bad.position) == (False, 13)
    no_newline = bundle_module.verify_bundle_stream(stream(data.rstrip(b"\n")), name="s")
    assert no_newline.ok
