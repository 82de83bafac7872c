"""Signed checkpoints in the C2SP ``tlog-checkpoint`` / ``signed-note`` style.

A checkpoint commits a log's origin, tree size and root hash. Its note is::

    <origin>
    <tree size, decimal>
    <root hash, base64>
    [extension lines…]

    — <key name> <base64(4-byte key id || 64-byte Ed25519 signature)>

The signature covers the body (every line above the blank line, each ending in a
newline). The key id is the first four bytes of
``SHA-256(key name || "\\n" || 0x01 || public key)`` (0x01: the Ed25519 signature type),
so a verifier can pick its line among signatures by other keys, which it ignores. A
verifier key is written ``<name>+<hex key id>+<base64(0x01 || public key)>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from forgehall.ledger.merkle import HASH_SIZE

ED25519_TYPE = b"\x01"
SIGNATURE_DASH = "\u2014"  # an em dash, as the signed-note format has it
_KEY_NAME = re.compile(r"[^\s+]+")
_SIZE = re.compile(r"0|[1-9][0-9]*")


class CheckpointError(ValueError):
    """A note that does not parse, or whose signature does not verify; says which."""


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise CheckpointError("the origin is one non-empty line")
        if self.size < 0:
            raise CheckpointError("the tree size is not negative")
        if len(self.root_hash) != HASH_SIZE:
            raise CheckpointError(f"the root hash is {HASH_SIZE} bytes")
        for line in self.extensions:
            if not line or "\n" in line:
                raise CheckpointError("an extension is one non-empty line")

    def body(self) -> str:
        """The text that is signed."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        return "".join(f"{line}\n" for line in (*lines, *self.extensions))


def parse_checkpoint_body(body: str) -> Checkpoint:
    """Parse the body of a note (the part before the blank line)."""
    if not body.endswith("\n"):
        raise CheckpointError("the checkpoint body does not end with a newline")
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError(
            f"a checkpoint has origin, size and root hash lines; this one has {len(lines)}"
        )
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise CheckpointError("line 1: the origin is empty")
    if not _SIZE.fullmatch(size_text):
        raise CheckpointError(f"line 2: tree size {size_text!r} is not a decimal number")
    try:
        root_hash = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        raise CheckpointError(f"line 3: root hash {root_text!r} is not base64") from None
    if len(root_hash) != HASH_SIZE:
        raise CheckpointError(f"line 3: the root hash is {len(root_hash)} bytes, not 32")
    if any(not line for line in extensions):
        raise CheckpointError("the checkpoint body has an empty line")
    return Checkpoint(origin, int(size_text), root_hash, tuple(extensions))


def _key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519_TYPE + public_key).digest()[:4]


def _check_key_name(name: str) -> None:
    if not _KEY_NAME.fullmatch(name):
        raise CheckpointError(f"key name {name!r} must be non-empty without spaces or '+'")


@dataclass(frozen=True)
class VerifierKey:
    name: str
    public_key: bytes  # raw 32-byte Ed25519

    def __post_init__(self) -> None:
        _check_key_name(self.name)
        if len(self.public_key) != 32:
            raise CheckpointError("an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> bytes:
        return _key_id(self.name, self.public_key)

    def encode(self) -> str:
        """``<name>+<hex key id>+<base64(0x01 || public key)>``."""
        encoded = base64.b64encode(ED25519_TYPE + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        parts = text.strip().split("+", 2)  # base64 may contain "+" too
        if len(parts) != 3:
            raise CheckpointError("a verifier key is <name>+<hex key id>+<base64 key>")
        name, hex_id, encoded = parts
        try:
            raw = base64.b64decode(encoded, validate=True)
            key_id = bytes.fromhex(hex_id)
        except (binascii.Error, ValueError):
            raise CheckpointError("the verifier key's id or key is not hex/base64") from None
        if raw[:1] != ED25519_TYPE or len(raw) != 33:
            raise CheckpointError("the verifier key is not an Ed25519 key (type 0x01)")
        key = cls(name, raw[1:])
        if key.key_id != key_id:
            raise CheckpointError("the verifier key's id does not match its name and key")
        return key


@dataclass(frozen=True)
class SigningKey:
    name: str
    private_key: Ed25519PrivateKey

    def __post_init__(self) -> None:
        _check_key_name(self.name)

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        return cls(name, Ed25519PrivateKey.generate())

    def verifier(self) -> VerifierKey:
        public = self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return VerifierKey(self.name, public)


def sign_checkpoint(checkpoint: Checkpoint, key: SigningKey) -> str:
    """The signed note of ``checkpoint``: body, blank line, one signature line."""
    body = checkpoint.body()
    signature = key.private_key.sign(body.encode())
    blob = base64.b64encode(key.verifier().key_id + signature).decode()
    return f"{body}\n{SIGNATURE_DASH} {key.name} {blob}\n"


def open_checkpoint(note: str, key: VerifierKey) -> Checkpoint:
    """Parse a signed note and check it carries a valid signature by ``key``.

    Raises:
        CheckpointError: the note is malformed, has no signature by ``key``, or the
            signature does not verify (forged, or the body was changed).
    """
    body, sep, signatures = note.partition("\n\n")
    if not sep:
        raise CheckpointError("the note has no blank line between body and signatures")
    body += "\n"
    checkpoint = parse_checkpoint_body(body)
    if not signatures.endswith("\n") or not signatures.strip():
        raise CheckpointError("the note has no signature lines")
    found = False
    for number, line in enumerate(signatures[:-1].split("\n"), start=1):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != SIGNATURE_DASH:
            raise CheckpointError(f"signature line {number} is not '— <name> <base64>'")
        _, name, blob_text = parts
        try:
            blob = base64.b64decode(blob_text, validate=True)
        except binascii.Error:
            raise CheckpointError(f"signature line {number} is not base64") from None
        if len(blob) < 5:
            raise CheckpointError(f"signature line {number} is too short")
        if name != key.name or blob[:4] != key.key_id:
            continue  # another key's signature: not ours to judge
        if len(blob) != 4 + 64:
            raise CheckpointError(f"signature line {number}: an Ed25519 signature is 64 bytes")
        try:
            Ed25519PublicKey.from_public_bytes(key.public_key).verify(blob[4:], body.encode())
        except InvalidSignature:
            raise CheckpointError(
                f"the signature by {key.name} does not verify: the checkpoint was changed "
                "or signed by another key"
            ) from None
        found = True
    if not found:
        raise CheckpointError(f"the note has no signature by {key.name} ({key.key_id.hex()})")
    return checkpoint
