"""Offline verification of a large ledger bundle, next to hashlib's raw SHA-256 speed.

What it builds: a bundle of ``--entries`` entries (1,000,000 by default) in a temporary
directory, written with ``ledger.bundle.write_bundle`` (the server's export layout) and
signed with a fresh Ed25519 key, with a checkpoint every ``--checkpoint-every`` entries
(1,000; the sequencer signs one per batch, and batches at 2,000 entries/s hold about that
many). The entries are gate results as ``gates run`` records them, with stdout excerpts
of varying length (0 to 2 KiB, cycling), about 1.6 KB of canonical JSON on average.
The directory is removed at the end.

What it measures, in one run:

- ``verify``: ``verify_bundle_file(path, key=…)`` as ``forgehall ledger verify`` runs it
  on a large file — every position, every leaf hash recomputed and compared, the tree
  rebuilt (``MerkleFrontier``), every checkpoint's Ed25519 signature and root checked —
  with ``--workers`` processes hashing byte ranges of the file (default: as the CLI
  chooses for a large file — one per CPU, at most 9), this one among them: it also checks
  their order and builds the tree, hashing a range only when the next one it needs is not
  ready; and again with one process; in entries/s, best of ``--rounds``;
- ``hashlib, per entry``: ``hashlib.sha256(entry).digest()`` over the same entries' bytes
  (held in memory), one call per entry — the least work a verifier must do, since every
  leaf is hashed on its own — best of ``--rounds``;
- ``hashlib, one stream``: one ``sha256`` updated with the whole bundle file in 1 MiB
  chunks (more bytes than the entries alone, and no per-call cost): the machine's raw
  hashing speed, for scale.

It prints each in entries/s (and MB/s), then ``ratio = verify / hashlib per entry``
(and the one-process figure next to it: hashing is about half of a single process's
work, the rest is reading, parsing and checking each record in Python). Target: ratio
>= 50 %. This is a benchmark, not a test: it exits 0 whether or not the
target is met, non-zero only when something crashed (or the bundle did not verify).

Run it from the repository root::

    uv run python bench/ledger_verify.py                       # 1,000,000 entries
    uv run python bench/ledger_verify.py --entries 100000 --rounds 3

Options: ``--entries`` (1000000), ``--checkpoint-every`` (1000), ``--rounds`` (2),
``--workers`` (as the CLI chooses).
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from forgehall.ledger.bundle import large_file_workers, verify_bundle_file, write_bundle
from forgehall.ledger.canonical import canonical_json
from forgehall.ledger.checkpoint import SigningKey

TARGET = 0.5
ORIGIN = "forgehall.bench.example/ledger/bench"
LINE = "tests/test_module.py::test_case PASSED                                    [ 42%]\n"


def entry(number: int) -> bytes:
    excerpt = (LINE * 30)[: (number * 37) % 2048]
    return canonical_json(
        {
            "gate_id": f"gate-{number % 9}",
            "gate_name": "Unit tests",
            "result": "PASS" if number % 13 else "FAIL",
            "reason": None if number % 13 else "exit 1",
            "scope": {
                "repository": "https://git.example.com/team/app.git",
                "commit": f"{number // 9:040x}",
                "branch": "main",
                "dirty": False,
                "issue_key": f"ENG-{number // 90}",
                "task_id": None,
            },
            "command": "uv run pytest -q",
            "command_sha256": f"{number % 9:064x}",
            "exit_code": 0 if number % 13 else 1,
            "started_at": "2031-05-01T12:00:00.123Z",
            "finished_at": "2031-05-01T12:01:10.456Z",
            "duration_ms": 70333 + number % 1000,
            "stdout_sha256": f"{number:064x}",
            "stderr_sha256": f"{number + 1:064x}",
            "stdout_excerpt": excerpt,
            "stderr_excerpt": "",
            "runner": {"host": f"build-{number % 4}", "runtime_id": None},
            "tier": "pilot",
        }
    )


def best(rounds: int, work: object) -> float:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()  # type: ignore[operator]
        timings.append(time.perf_counter() - started)
    return min(timings)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    entries = [entry(n) for n in range(args.entries)]
    total = sum(len(e) for e in entries)
    key = SigningKey.generate("forgehall.bench.example")
    sizes = list(range(args.checkpoint_every, args.entries, args.checkpoint_every))
    sizes.append(args.entries)
    with tempfile.TemporaryDirectory(prefix="fh_bench_") as directory:
        path = Path(directory) / "bundle.json"
        with path.open("wb", buffering=1 << 20) as handle:
            write_bundle(handle, ORIGIN, key, entries, sizes)
        size = path.stat().st_size
        print(
            f"built {args.entries:,} entries ({total / args.entries:,.0f} bytes each on "
            f"average), {len(sizes):,} checkpoints, bundle {size / 1e6:,.0f} MB in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        verifier = key.verifier()
        report = verify_bundle_file(path, key=verifier)  # also warms the page cache
        if not report.ok:
            print(f"the bundle does not verify: {report.summary()}")
            return 1

        def verify() -> None:
            verify_bundle_file(path, key=verifier, workers=args.workers)

        def verify_serial() -> None:
            verify_bundle_file(path, key=verifier, workers=1)

        def per_entry() -> None:
            sha256 = hashlib.sha256
            for data in entries:
                sha256(data).digest()

        def stream() -> None:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)

        verify_s = best(args.rounds, verify)
        serial_s = best(args.rounds, verify_serial) if args.workers > 1 else verify_s
        per_entry_s = best(args.rounds, per_entry)
        stream_s = best(args.rounds, stream)
    n = args.entries
    print(f"\n{'':<22}{'seconds':>8}{'entries/s':>13}{'MB/s':>9}")
    rows = [(f"verify, {args.workers} process(es)", verify_s, size)]
    if args.workers > 1:
        rows.append(("verify, 1 process", serial_s, size))
    rows += [("hashlib, per entry", per_entry_s, total), ("hashlib, one stream", stream_s, size)]
    for name, seconds, volume in rows:
        print(f"{name:<22}{seconds:>8.2f}{n / seconds:>13,.0f}{volume / seconds / 1e6:>9,.0f}")
    ratio = per_entry_s / verify_s
    verdict = "met" if ratio >= TARGET else "MISSED"
    print(
        f"\nratio = verify ({args.workers} process(es)) / hashlib per entry = "
        f"{n / verify_s:,.0f} / {n / per_entry_s:,.0f} entries/s = {ratio:.0%} "
        f"(target >= {TARGET:.0%}: {verdict}); against one stream over the whole file: "
        f"{stream_s / verify_s:.0%}"
    )
    if args.workers > 1:
        print(
            f"one process: {n / serial_s:,.0f} entries/s = {per_entry_s / serial_s:.0%} of "
            f"hashlib per entry ({stream_s / serial_s:.0%} of one stream)"
        )
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries in the bundle")
    parser.add_argument(
        "--checkpoint-every", type=int, default=1000, help="entries between checkpoints"
    )
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (best is kept)")
    parser.add_argument(
        "--workers",
        type=int,
        default=large_file_workers(),
        help="verifying processes (default: what `forgehall ledger verify` uses for a "
        "large file: 1 below 4 CPUs, else the CPU count - 1, at most 8)",
    )
    args = parser.parse_args(argv)
    if min(args.entries, args.checkpoint_every, args.rounds, args.workers) < 1:
        parser.error("--entries, --checkpoint-every, --rounds and --workers must be >= 1")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    print(
        f"ledger_verify: {arguments.entries:,} entries, a checkpoint every "
        f"{arguments.checkpoint_every:,}, best of {arguments.rounds} rounds; Python "
        f"{platform.python_version()}, OpenSSL via hashlib, {platform.platform()}"
    )
    sys.exit(run(arguments))
