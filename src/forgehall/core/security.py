"""Secrets in motion: opaque tokens, one-time codes, session JWTs, Fernet vault keys.

Invariants:
- Opaque tokens carry their kind in a prefix (``fh_pat_``, ``fh_dmn_``, ``fh_tsk_``, …)
  and 256 bits of randomness; only their SHA-256 is stored. Looking a token up by its
  hash and comparing with :func:`hmac.compare_digest` keeps comparisons constant-time.
- Login codes are stored as an HMAC keyed with the JWT secret, so a leaked database row
  cannot be brute-forced offline from the 10^6 code space without the key.
- Session JWTs are HS256 with issuer, subject, session id and expiry, verified with all
  four required; the session row is still checked so revocation is immediate.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import jwt
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

TokenKind = Literal["pat", "dmn", "tsk", "inv", "boot", "cli"]
TOKEN_PREFIX = "fh_"  # noqa: S105 - a public prefix, not a secret
_ALPHABET = string.ascii_letters + string.digits
JWT_ALGORITHM = "HS256"
JWT_ISSUER = "forgehall"


def generate_token(kind: TokenKind) -> str:
    """A new opaque token such as ``fh_pat_…`` (43 random base62 characters)."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(43))
    return f"{TOKEN_PREFIX}{kind}_{body}"


def token_kind(token: str) -> str | None:
    """The kind encoded in a token's prefix, or None when it is not one of ours."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "fh" or len(parts[2]) < 20:
        return None
    return parts[1]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_display_prefix(token: str) -> str:
    """The part of a token safe to show again (kind and four characters)."""
    return token[: token.index("_", 3) + 5]


def generate_login_code() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"


def hash_login_code(code: str, email: str, key: str) -> str:
    return hmac.new(key.encode(), f"{email}:{code}".encode(), hashlib.sha256).hexdigest()


def equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class SessionClaims:
    user_id: str
    session_id: str
    expires_at: datetime


class InvalidSessionToken(Exception):
    """The session JWT is malformed, forged, expired or from another issuer."""


def encode_session_jwt(secret: str, *, user_id: str, session_id: str, ttl: timedelta) -> str:
    now = datetime.now(UTC)
    claims = {"iss": JWT_ISSUER, "sub": user_id, "sid": session_id, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def decode_session_jwt(secret: str, token: str) -> SessionClaims:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            issuer=JWT_ISSUER,
            options={"require": ["iss", "sub", "sid", "exp"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidSessionToken(str(exc)) from None
    if not isinstance(claims.get("sid"), str) or not isinstance(claims.get("sub"), str):
        raise InvalidSessionToken("malformed claims")
    return SessionClaims(
        user_id=claims["sub"],
        session_id=claims["sid"],
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
    )


class Vault:
    """Encrypts and decrypts credentials with the configured Fernet keys.

    The first key encrypts; every key decrypts, so rotating means putting a new key in
    front, re-encrypting (``rotate``), then dropping the old key.
    """

    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise ValueError("no encryption key configured")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in parts])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise ValueError(
                "cannot decrypt: no configured key matches (was "
                "FORGEHALL_ENCRYPTION_KEY changed without rotation?)"
            ) from None

    def rotate(self, ciphertext: str) -> str:
        return self._fernet.rotate(ciphertext.encode()).decode()
