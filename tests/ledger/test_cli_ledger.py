"""The ledger commands against a real server process (SQLite), as a user runs them:
`gates run --submit`, `ledger entries|checkpoints|readiness|export|public-key`, and
`ledger verify` on bundles and with `--server` — which must find and name every kind of
tampering done behind the server's back (triggers dropped, rows rewritten with raw SQL,
a database restored from an old backup), and remember the checkpoint it trusted.

A module fixture builds one good ledger and keeps a copy of its database; each tampering
test restores that copy into its own directory, changes it, and starts a server on it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from forgehall.db.engine import Database
from forgehall.db.migrate import upgrade_to_head
from forgehall.db.url import resolve_database
from forgehall.ledger.checkpoint import Checkpoint, SigningKey, sign_checkpoint
from forgehall.ledger.merkle import MerkleFrontier, leaf_hash
from tests.conftest import make_person, make_settings, make_workspace
from tests.gates.project import commit_all, make_project
from tests.process import ServerProcess, base_env, run_cli

pytestmark = pytest.mark.slow

GATES_YAML = """\
version: 1
gates:
  - id: lint
    command: "true"
    required_in: [pilot, production]
  - id: unit
    command: "echo 412 passed"
  - id: contract
    command: "echo broken >&2; exit 1"
    required_in: [production]
"""
APPEND_ONLY = (
    "ledger_entries",
    "ledger_nodes",
    "ledger_checkpoints",
    "ledger_keys",
    "ledger_gate_sets",
)


def db_file(data: Path) -> Path:
    return data / "forgehall.db"


def prepare_database(data: Path) -> str:
    """A migrated database with ann (a token) owning workspace ``team``; the token."""
    settings = make_settings(data.parent, database_url=f"sqlite:///{db_file(data)}")

    async def build() -> str:
        db = Database(resolve_database(settings))
        try:
            await upgrade_to_head(db)
            ann = await make_person(db, "ann@example.com")
            await make_workspace(db, ann, "team")
            return ann.token
        finally:
            await db.dispose()

    return asyncio.run(build())


@dataclass
class Instance:
    root: Path
    token: str
    server: ServerProcess | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def start(self, **env: str) -> ServerProcess:
        server = ServerProcess(self.root, env=base_env(self.root, **env))
        server.start().wait_ready()
        self.server = server
        return server

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.server is not None
        self.server.stop(sig)
        self.server = None

    @property
    def env(self) -> dict[str, str]:
        assert self.server is not None
        return base_env(
            self.root,
            XDG_CONFIG_HOME=str(self.root / "config"),
            FORGEHALL_SERVER_URL=self.server.url,
            FORGEHALL_TOKEN=self.token,
            FORGEHALL_WORKSPACE="team",
        )

    def cli(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        result = run_cli(*args, env=self.env, cwd=cwd)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def ok(self, *args: str, cwd: Path | None = None) -> str:
        result = self.cli(*args, cwd=cwd)
        assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
        return result.stdout

    def api(self) -> httpx.Client:
        assert self.server is not None
        return httpx.Client(
            base_url=f"{self.server.url}/api/v1/workspaces/team/ledger",
            headers={"authorization": f"Bearer {self.token}"},
            timeout=10,
        )

    def wait_for_size(self, size: int, timeout: float = 20) -> dict[str, Any]:
        """The latest checkpoint once it covers ``size`` entries (the sequencer runs
        every half second)."""
        deadline = time.monotonic() + timeout
        with self.api() as api:
            while time.monotonic() < deadline:
                latest = api.get("/checkpoints/latest")
                if latest.status_code == 200 and latest.json()["size"] >= size:
                    body: dict[str, Any] = latest.json()
                    return body
                time.sleep(0.1)
        raise AssertionError(
            f"no checkpoint of size {size}:\n{self.server and self.server.output()}"
        )

    def sql(self, *statements: str) -> None:
        """Raw SQL on the stopped server's database, as someone with the file could."""
        assert self.server is None
        with sqlite3.connect(db_file(self.data)) as conn:
            for statement in statements:
                conn.execute(statement)

    def drop_triggers(self) -> None:
        self.sql(
            *(
                f"DROP TRIGGER {table}_no_{op}"
                for table in APPEND_ONLY
                for op in ("update", "delete")
            )
        )


def entry(gate_id: str, commit: str, issue_key: str | None = None) -> dict[str, Any]:
    return {
        "gate_id": gate_id,
        "gate_name": gate_id,
        "result": "PASS",
        "reason": None,
        "scope": {
            "repository": "https://git.example.com/team/other.git",
            "commit": commit,
            "branch": "main",
            "dirty": False,
            "issue_key": issue_key,
            "task_id": None,
        },
        "command": "true",
        "command_sha256": "00" * 32,
        "exit_code": 0,
        "started_at": "2031-01-01T00:00:00.000Z",
        "finished_at": "2031-01-01T00:00:01.000Z",
        "duration_ms": 1000,
        "stdout_sha256": None,
        "stderr_sha256": None,
        "stdout_excerpt": "",
        "stderr_excerpt": "",
        "runner": {"host": "ci", "runtime_id": None},
        "tier": None,
    }


def append(instance: Instance, entries: list[dict[str, Any]]) -> None:
    with instance.api() as api:
        response = api.post("/entries", json={"entries": entries})
        assert response.status_code == 201, response.text


def backup(instance: Instance, to: Path) -> Path:
    """A consistent copy of the (stopped) server's database."""
    assert instance.server is None
    with sqlite3.connect(db_file(instance.data)) as source, sqlite3.connect(to) as target:
        source.backup(target)
    return to


@dataclass
class Good:
    """The state of a verified ledger: a database copy (and an older one), the trust
    file the CLI wrote, the public key, an exported bundle."""

    database: Path
    older_database: Path
    older_size: int
    size: int
    data: Path  # the original data directory (encryption key, jwt secret)
    token: str
    config: Path
    key_text: str
    bundle: Path


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Good]:
    root = tmp_path_factory.mktemp("ledger")
    token = prepare_database(root / "data")
    instance = Instance(root, token)
    instance.start()
    try:
        project = make_project(root / "project", GATES_YAML)
        first = instance.cli("gates", "run", "--submit", cwd=project)
        assert first.returncode == 1, first.stderr  # contract fails, by design
        assert "Submitted 3 results to the ledger of team" in first.stdout
        append(instance, [entry(f"g{i}", "x1", "ENG-1") for i in range(4)])
        instance.wait_for_size(7)
        instance.stop()
        older = backup(instance, root / "older.db")
        instance.start()
        head = commit_all(project, "second")
        second = instance.cli("gates", "run", "--submit", "--json", cwd=project)
        assert second.returncode == 1, second.stderr
        document = json.loads(second.stdout)
        assert document["submitted"] == {
            "workspace": "team",
            "origin": document["submitted"]["origin"],
        }
        append(instance, [entry(f"h{i}", "x2", "ENG-1") for i in range(5)])
        latest = instance.wait_for_size(15)
        assert latest["size"] == 15

        listed = json.loads(instance.ok("ledger", "entries", "--commit", head, "--json"))
        assert sorted(e["entry"]["gate_id"] for e in listed["items"]) == [
            "contract",
            "lint",
            "unit",
        ]
        table = instance.ok("ledger", "entries", "--issue", "ENG-1", "--limit", "3")
        assert "h4" in table
        assert "ENG-1" in table
        assert instance.ok("ledger", "checkpoints", "--json").count('"size"') >= 2
        ready = instance.cli("ledger", "readiness", "--commit", head)
        assert ready.returncode == 0, ready.stdout + ready.stderr
        assert ready.stdout.startswith("READY for prototype")
        production = instance.cli("ledger", "readiness", "--commit", head, "--tier", "production")
        assert production.returncode == 1
        assert "blocked  contract: FAIL" in production.stdout
        issue = instance.cli("ledger", "readiness", "--issue", "ENG-1")
        assert issue.returncode == 1
        assert "no gates" in issue.stdout, issue.stdout

        key_text = instance.ok("ledger", "public-key").strip()
        (root / "key.txt").write_text(key_text + "\n")
        bundle = root / "bundle.json"
        instance.ok("ledger", "export", "-o", str(bundle))
        verified = instance.ok(
            "ledger", "verify", str(bundle), "--public-key", str(root / "key.txt")
        )
        assert "OK: 15 entries" in verified
        server_check = instance.ok("ledger", "verify", "--server")
        assert "OK: 15 entries" in server_check
        assert "trusted from now on: the checkpoint of size 15" in server_check
        again = instance.ok("ledger", "verify", "--server")
        assert "the key trusted for this log before" in again
        instance.stop()
        yield Good(
            database=backup(instance, root / "good.db"),
            older_database=older,
            older_size=7,
            size=15,
            data=root / "data",
            token=token,
            config=root / "config",
            key_text=key_text,
            bundle=bundle,
        )
    finally:
        if instance.server is not None:
            instance.stop()


def restore(good: Good, tmp_path: Path, database: Path | None = None) -> Instance:
    """A stopped instance on a copy of the good database, with the CLI's trust file."""
    shutil.copytree(good.data, tmp_path / "data", ignore=shutil.ignore_patterns("forgehall.db*"))
    shutil.copyfile(database or good.database, db_file(tmp_path / "data"))
    shutil.copytree(good.config, tmp_path / "config")
    return Instance(tmp_path, good.token)


def verify_server(instance: Instance) -> subprocess.CompletedProcess[str]:
    instance.start()
    result = instance.cli("ledger", "verify", "--server")
    instance.stop()
    return result


def assert_tampered(result: subprocess.CompletedProcess[str], position: int, *words: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"TAMPERED: position {position}:" in result.stdout, result.stdout
    for word in words:
        assert word in result.stdout, result.stdout


def test_a_changed_byte_on_the_server_is_named(good: Good, tmp_path: Path) -> None:
    instance = restore(good, tmp_path)
    instance.drop_triggers()
    # One byte: "true" becomes "trUe" in entry 12's command.
    instance.sql(
        'UPDATE ledger_entries SET entry = replace(entry, \'"command":"true"\', '
        '\'"command":"trUe"\') WHERE position = 12'
    )
    assert_tampered(verify_server(instance), 12, "the entry was changed")


def test_a_changed_entry_with_its_leaf_hash_is_caught_by_a_checkpoint(
    good: Good, tmp_path: Path
) -> None:
    instance = restore(good, tmp_path)
    instance.drop_triggers()
    # Rewrite entry 12 and its stored leaf hash consistently; only signatures can tell.
    with sqlite3.connect(db_file(instance.data)) as conn:
        (text,) = conn.execute("SELECT entry FROM ledger_entries WHERE position = 12").fetchone()
        changed = text.replace('"PASS"', '"FAIL"')
        assert changed != text
        conn.execute(
            "UPDATE ledger_entries SET entry = ?, leaf_hash = ? WHERE position = 12",
            (changed, leaf_hash(changed.encode()).hex()),
        )
    result = verify_server(instance)
    assert result.returncode == 1
    assert "signs another root than the entries give" in result.stdout


def test_a_deleted_entry_is_named(good: Good, tmp_path: Path) -> None:
    instance = restore(good, tmp_path)
    instance.drop_triggers()
    instance.sql("DELETE FROM ledger_entries WHERE position = 4")
    assert_tampered(verify_server(instance), 4, "4 missing (1 entry removed")


def test_swapped_entries_are_named(good: Good, tmp_path: Path) -> None:
    instance = restore(good, tmp_path)
    instance.drop_triggers()
    with sqlite3.connect(db_file(instance.data)) as conn:
        rows = dict(
            conn.execute("SELECT position, entry FROM ledger_entries WHERE position IN (5, 6)")
        )
        conn.execute("UPDATE ledger_entries SET entry = ? WHERE position = 5", (rows[6],))
        conn.execute("UPDATE ledger_entries SET entry = ? WHERE position = 6", (rows[5],))
    assert_tampered(verify_server(instance), 5, "the entry was changed")


def test_a_truncated_log_is_named(good: Good, tmp_path: Path) -> None:
    instance = restore(good, tmp_path)
    instance.drop_triggers()
    instance.sql("DELETE FROM ledger_entries WHERE position >= 12")
    assert_tampered(verify_server(instance), 12, "entries 12..14 were removed (truncated)")
    # Cut back to an earlier checkpoint, checkpoints and all: consistent with itself,
    # but below the checkpoint the CLI trusted.
    instance.sql("DELETE FROM ledger_entries WHERE position >= 7")
    instance.sql("DELETE FROM ledger_checkpoints WHERE size > 7")
    assert_tampered(
        verify_server(instance), 7, "below the checkpoint of size 15 trusted on", "rolled back"
    )


def test_a_checkpoint_forged_with_another_key_is_named(good: Good, tmp_path: Path) -> None:
    instance = restore(good, tmp_path)
    instance.drop_triggers()
    with sqlite3.connect(db_file(instance.data)) as conn:
        origin, root_hex = conn.execute(
            "SELECT h.origin, c.root_hash FROM ledger_heads h JOIN ledger_checkpoints c "
            "ON c.workspace_id = h.workspace_id WHERE c.size = 15"
        ).fetchone()
        name = good.key_text.split("+")[0]
        forged = sign_checkpoint(
            Checkpoint(origin, 15, bytes.fromhex(root_hex)), SigningKey.generate(name)
        )
        conn.execute("UPDATE ledger_checkpoints SET note = ? WHERE size = 15", (forged,))
    result = verify_server(instance)
    assert result.returncode == 1, result.stdout
    assert "is not signed by the key trusted earlier for this origin" in result.stdout
    assert "forged or altered checkpoint" in result.stdout


def test_a_server_signing_with_a_new_key_is_caught(good: Good, tmp_path: Path) -> None:
    """Someone with the database and the encryption key swaps in a key of their own and
    re-signs every checkpoint: the log is consistent with itself — and with the key the
    bundle names — but not with the key the CLI trusted, nor with a pinned one."""
    instance = restore(good, tmp_path)
    instance.drop_triggers()
    signer = SigningKey.generate(good.key_text.split("+")[0])
    raw_private = signer.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    vault = Fernet((instance.data / "encryption_key").read_text().strip().encode())
    with sqlite3.connect(db_file(instance.data)) as conn:
        conn.execute(
            "UPDATE ledger_keys SET public_key = ?, private_key = ?",
            (
                base64.b64encode(signer.verifier().public_key).decode(),
                vault.encrypt(base64.b64encode(raw_private)).decode(),
            ),
        )
        origin = conn.execute("SELECT origin FROM ledger_heads").fetchone()[0]
        leaves = [
            bytes.fromhex(h)
            for (h,) in conn.execute("SELECT leaf_hash FROM ledger_entries ORDER BY position")
        ]
        for row_id, size in conn.execute("SELECT id, size FROM ledger_checkpoints").fetchall():
            frontier = MerkleFrontier()
            frontier.extend(leaves[:size])
            note = sign_checkpoint(Checkpoint(origin, size, frontier.root()), signer)
            conn.execute("UPDATE ledger_checkpoints SET note = ? WHERE id = ?", (note, row_id))
    assert_tampered(verify_server(instance), 0, "not signed by the key trusted earlier")
    instance.start()
    bundle = tmp_path / "resigned.json"
    instance.ok("ledger", "export", "-o", str(bundle))
    served = instance.ok("ledger", "public-key").strip()
    instance.stop()
    assert served == signer.verifier().encode() != good.key_text
    pinned_file = tmp_path / "key.txt"
    pinned_file.write_text(good.key_text)
    env = base_env(tmp_path)
    pinned = run_cli(
        "ledger", "verify", str(bundle), "--standalone", "--public-key", str(pinned_file), env=env
    )
    assert_tampered(pinned, 0, "not signed by the key given with --public-key")
    alone = run_cli("ledger", "verify", str(bundle), "--standalone", env=env)
    assert alone.returncode == 0, "consistent with itself: only a pinned or trusted key tells"


def test_a_server_rolled_back_to_an_old_backup_is_caught(good: Good, tmp_path: Path) -> None:
    instance = restore(good, tmp_path, database=good.older_database)
    assert_tampered(
        verify_server(instance), good.older_size, "below the checkpoint of size 15 trusted on"
    )
    # The old backup then grows past the trusted size with other entries: a fork.
    instance.start()
    append(instance, [entry(f"fork{i}", "x9") for i in range(10)])
    instance.wait_for_size(17)
    result = instance.cli("ledger", "verify", "--server")
    instance.stop()
    assert_tampered(result, 0, "history was rewritten somewhere in positions 0..14")
    # Nothing of that was trusted: the remembered checkpoint is still the good one.
    trust = json.loads((instance.root / "config" / "forgehall" / "ledger-trust.json").read_text())
    (stored,) = trust["checkpoints"].values()
    assert stored["note"].split("\n")[1] == "15"


def test_the_raw_sql_refusal_holds_on_the_server_database(good: Good, tmp_path: Path) -> None:
    instance = restore(good, tmp_path)
    for statement in (
        "UPDATE ledger_entries SET entry = '{}' WHERE position = 0",
        "DELETE FROM ledger_checkpoints",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            instance.sql(statement)
    assert verify_server(instance).returncode == 0


def test_bundle_tampering_is_named_by_the_cli(good: Good, tmp_path: Path) -> None:
    key = tmp_path / "key.txt"
    key.write_text(good.key_text)
    env = base_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "config"))
    shutil.copytree(good.config, tmp_path / "config")
    lines = good.bundle.read_bytes().splitlines(keepends=True)
    start = lines.index(b'],"entries":[\n') + 1

    def check(changed: list[bytes], position: int, *words: str) -> None:
        path = tmp_path / "tampered.json"
        path.write_bytes(b"".join(changed))
        result = run_cli("ledger", "verify", str(path), "--public-key", str(key), env=env)
        assert_tampered(result, position, *words)

    one_byte = list(lines)
    one_byte[start + 3] = one_byte[start + 3].replace(b'"PASS"', b'"PASs"', 1)
    check(one_byte, 3, "the entry was changed")
    deleted = list(lines)
    del deleted[start + 2]
    check(deleted, 2, "2 missing")
    swapped = list(lines)
    swapped[start + 5], swapped[start + 6] = swapped[start + 6], swapped[start + 5]
    check(swapped, 5, "position 6")
    truncated = [*lines[: start + 10], lines[start + 10].replace(b"},\n", b"}\n"), lines[-1]]
    check(truncated, 11, "were removed (truncated)")
    # Entries and checkpoints cut back together: only the trusted checkpoint tells.
    header = json.loads(lines[0].rstrip(b"\n") + b"]}")
    notes = [json.loads(line.rstrip(b",\n")) for line in lines[1 : start - 1]]
    kept_notes = [n for n in notes if int(n.split("\n")[1]) <= 7]
    cut = [
        lines[0].replace(f'"size":{header["size"]}'.encode(), b'"size":7'),
        *[json.dumps(n).encode() + b",\n" for n in kept_notes[:-1]],
        json.dumps(kept_notes[-1]).encode() + b"\n",
        lines[start - 1],
        *lines[start : start + 6],
        lines[start + 6].replace(b"},\n", b"}\n"),
        lines[-1],
    ]
    check(cut, 7, "below the checkpoint of size 15 trusted")
    alone = run_cli("ledger", "verify", str(tmp_path / "tampered.json"), "--standalone", env=env)
    assert alone.returncode == 0, "a clean cut is only visible against a trusted checkpoint"
    forged_notes = list(lines)
    name = good.key_text.split("+")[0]
    body = json.loads(forged_notes[1].rstrip(b",\n"))
    origin, size, _ = body.split("\n")[:3]
    frontier = MerkleFrontier()
    frontier.extend(
        leaf_hash(line[len(b'{"entry":') : line.rfind(b',"leaf_hash":"')])
        for line in lines[start : start + int(size)]
    )
    forged = sign_checkpoint(
        Checkpoint(origin, int(size), frontier.root()), SigningKey.generate(name)
    )
    forged_notes[1] = json.dumps(forged).encode() + (
        b",\n" if forged_notes[1].endswith(b",\n") else b"\n"
    )
    check(forged_notes, 0, "is not signed by the key given with --public-key")
    assert (
        run_cli("ledger", "verify", str(good.bundle), "--public-key", str(key), env=env).returncode
        == 0
    )
    # The same, with worker processes hashing byte ranges of the file.
    parallel = run_cli(
        "ledger",
        "verify",
        str(tmp_path / "tampered.json"),
        "--public-key",
        str(key),
        "--jobs",
        "2",
        env=env,
    )
    assert_tampered(parallel, 0, "is not signed by the key given with --public-key")
    check_parallel = list(lines)
    del check_parallel[start + 9]
    (tmp_path / "deleted.json").write_bytes(b"".join(check_parallel))
    result = run_cli("ledger", "verify", str(tmp_path / "deleted.json"), "--jobs", "2", env=env)
    assert_tampered(result, 9, "9 missing")
    not_a_bundle = tmp_path / "x.json"
    not_a_bundle.write_text("[]")
    assert run_cli("ledger", "verify", str(not_a_bundle), env=env).returncode == 2


def test_a_crash_between_append_and_checkpoint_loses_nothing(tmp_path: Path) -> None:
    token = prepare_database(tmp_path / "data")
    instance = Instance(tmp_path, token)
    instance.start(FORGEHALL_SERVICES_DISABLED="ledger-sequencer")
    for batch in range(3):
        append(instance, [entry(f"c{batch}-{i}", "x1") for i in range(4)])  # 201: durable
    with instance.api() as api:
        assert api.get("/checkpoints/latest").status_code == 404  # nothing sequenced yet
    instance.stop(signal.SIGKILL)
    instance.start()
    instance.wait_for_size(12)
    assert "OK: 12 entries" in instance.ok("ledger", "verify", "--server")
    listed = json.loads(instance.ok("ledger", "entries", "--limit", "20", "--oldest", "--json"))
    assert [e["entry"]["gate_id"] for e in listed["items"]] == [
        f"c{b}-{i}" for b in range(3) for i in range(4)
    ]
    instance.stop()


def test_submit_needs_a_login_and_reports_refusals(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", GATES_YAML)
    env = base_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "config"))
    result = run_cli("gates", "run", "--submit", env=env, cwd=project)
    assert result.returncode == 1
    assert "not logged in" in result.stderr
    assert not (project / ".forgehall" / "evidence").exists(), "nothing ran"
    token = prepare_database(tmp_path / "data")
    instance = Instance(tmp_path, token)
    instance.start()
    try:
        refused = instance.cli("gates", "run", "--submit", "--workspace", "nosuch", cwd=project)
        assert refused.returncode == 1
        assert "results were not submitted to the server ledger: 404" in refused.stderr
        assert "Recorded 3 results" in refused.stdout, "the local ledger still has them"
    finally:
        instance.stop()
