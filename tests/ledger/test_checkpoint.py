"""Signed checkpoints: the note format, Ed25519 signatures, and what is refused."""

from __future__ import annotations

import base64
import hashlib

import pytest

from forgehall.ledger.checkpoint import (
    Checkpoint,
    CheckpointError,
    SigningKey,
    VerifierKey,
    open_checkpoint,
    parse_checkpoint_body,
    sign_checkpoint,
)
from forgehall.ledger.merkle import leaf_hash, root

ROOT = root([leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")])
CHECKPOINT = Checkpoint("forgehall.example/ws/team", 3, ROOT)


def test_sign_and_open_round_trip_with_the_exact_note_format() -> None:
    key = SigningKey.generate("forgehall.example")
    note = sign_checkpoint(CHECKPOINT, key)
    body, signature = note.split("\n\n")
    assert body + "\n" == f"forgehall.example/ws/team\n3\n{base64.b64encode(ROOT).decode()}\n"
    dash, name, blob = signature.rstrip("\n").split(" ")
    assert dash == "\u2014"
    assert name == "forgehall.example"
    raw = base64.b64decode(blob)
    assert len(raw) == 4 + 64
    public = key.verifier().public_key
    assert raw[:4] == hashlib.sha256(b"forgehall.example\n\x01" + public).digest()[:4]
    assert open_checkpoint(note, key.verifier()) == CHECKPOINT


@pytest.mark.parametrize("attempt", range(20))  # base64 with and without "+" in it
def test_verifier_keys_encode_and_parse(attempt: int) -> None:
    verifier = SigningKey.generate("log.example").verifier()
    text = verifier.encode()
    name, key_id, encoded = text.split("+", 2)
    assert name == "log.example"
    assert bytes.fromhex(key_id) == verifier.key_id
    assert base64.b64decode(encoded) == b"\x01" + verifier.public_key
    assert VerifierKey.parse(text) == verifier
    wrong_id = f"{name}+00000000+{encoded}"
    with pytest.raises(CheckpointError, match="id does not match"):
        VerifierKey.parse(wrong_id)
    with pytest.raises(CheckpointError, match="name"):
        VerifierKey("two words", verifier.public_key)


def test_a_signature_by_another_key_is_rejected() -> None:
    trusted = SigningKey.generate("forgehall.example")
    forger = SigningKey.generate("forgehall.example")  # same name, another key
    note = sign_checkpoint(CHECKPOINT, forger)
    with pytest.raises(CheckpointError, match=r"no signature by forgehall\.example"):
        open_checkpoint(note, trusted.verifier())


def test_a_forged_signature_under_the_trusted_key_id_is_rejected() -> None:
    trusted = SigningKey.generate("forgehall.example")
    forger = SigningKey.generate("forgehall.example")
    forged = forger.private_key.sign(CHECKPOINT.body().encode())
    blob = base64.b64encode(trusted.verifier().key_id + forged).decode()
    note = f"{CHECKPOINT.body()}\n\u2014 forgehall.example {blob}\n"
    with pytest.raises(CheckpointError, match="does not verify"):
        open_checkpoint(note, trusted.verifier())


def test_a_changed_body_no_longer_verifies() -> None:
    key = SigningKey.generate("forgehall.example")
    note = sign_checkpoint(CHECKPOINT, key)
    with pytest.raises(CheckpointError, match="does not verify"):
        open_checkpoint(note.replace("\n3\n", "\n4\n", 1), key.verifier())


def test_other_signatures_are_ignored_and_ours_is_found() -> None:
    ours = SigningKey.generate("forgehall.example")
    witness = SigningKey.generate("witness.example")
    theirs = sign_checkpoint(CHECKPOINT, witness).split("\n\n")[1]
    mine = sign_checkpoint(CHECKPOINT, ours).split("\n\n")[1]
    note = CHECKPOINT.body() + "\n" + theirs + mine
    assert open_checkpoint(note, ours.verifier()) == CHECKPOINT
    assert open_checkpoint(note, witness.verifier()) == CHECKPOINT


def test_extension_lines_are_signed_too() -> None:
    key = SigningKey.generate("forgehall.example")
    extended = Checkpoint("origin", 0, ROOT, ("extension line",))
    note = sign_checkpoint(extended, key)
    assert open_checkpoint(note, key.verifier()) == extended
    with pytest.raises(CheckpointError, match="does not verify"):
        open_checkpoint(note.replace("extension line", "other line"), key.verifier())


ROOT_B64 = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"origin\n3\n{ROOT_B64}", "does not end with a newline"),
        ("origin\n3\n", "origin, size and root hash"),
        (f"\n3\n{ROOT_B64}\n", "origin is empty"),
        (f"origin\n03\n{ROOT_B64}\n", "line 2"),
        (f"origin\n-1\n{ROOT_B64}\n", "line 2"),
        ("origin\n3\nnot base64!\n", "line 3: root hash 'not base64!' is not base64"),
        (f"origin\n3\n{base64.b64encode(b'short').decode()}\n", "5 bytes, not 32"),
    ],
)
def test_malformed_bodies_are_clear_errors(body: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        parse_checkpoint_body(body)


@pytest.mark.parametrize(
    ("note", "message"),
    [
        (f"origin\n3\n{ROOT_B64}\n", "no blank line"),
        (f"origin\n3\n{ROOT_B64}\n\n", "no signature lines"),
        (f"origin\n3\n{ROOT_B64}\n\n- name AAAA\n", "is not '— <name> <base64>'"),
        (f"origin\n3\n{ROOT_B64}\n\n\u2014 name !!!\n", "not base64"),
        (f"origin\n3\n{ROOT_B64}\n\n\u2014 name AAAA\n", "too short"),
    ],
)
def test_malformed_notes_are_clear_errors(note: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(note, SigningKey.generate("name").verifier())
