"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import DateTime, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both dialects.

    SQLite stores no zone, so values are normalised to UTC on the way in and tagged as
    UTC on the way out; naive datetimes are refused rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column; use an aware one")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"unexpected value {value!r} in a UTCDateTime column")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class _VaultLike(Protocol):
    def encrypt(self, plaintext: str) -> str: ...
    def decrypt(self, ciphertext: str) -> str: ...


_vault: _VaultLike | None = None


def install_vault(vault: _VaultLike | None) -> None:
    """Set the process's credential vault (from FORGEHALL_ENCRYPTION_KEY)."""
    global _vault
    _vault = vault


class CredentialKeyError(RuntimeError):
    """No encryption key is configured, or none of the configured keys opens the value."""


class EncryptedText(TypeDecorator[str]):
    """Text encrypted at rest with the process's vault (Fernet / MultiFernet).

    Writing a value with no vault configured fails loudly instead of storing plaintext.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if _vault is None:
            raise CredentialKeyError("FORGEHALL_ENCRYPTION_KEY is required to store credentials")
        return _vault.encrypt(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if _vault is None:
            raise CredentialKeyError("FORGEHALL_ENCRYPTION_KEY is required to read credentials")
        try:
            return _vault.decrypt(str(value))
        except ValueError as exc:  # encrypted with a key that is no longer configured
            raise CredentialKeyError(str(exc)) from None
