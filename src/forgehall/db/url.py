"""Turn the configured database URL into what the engine needs.

The only place that parses ``DATABASE_URL``. Pool sizes follow the precedence
environment > ``pool_max_conns`` / ``pool_min_conns`` query parameters > defaults, and
the pool parameters are removed from the URL before the driver sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

if TYPE_CHECKING:
    from forgehall.settings import Settings

DEFAULT_MAX_CONNS = 25
DEFAULT_MIN_CONNS = 5
_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg", "postgresql+psycopg"}
_SQLITE_SCHEMES = {"sqlite", "sqlite+aiosqlite"}


class DatabaseUrlError(ValueError):
    """The database URL cannot be used; the message says why in one line."""


@dataclass(frozen=True)
class DatabaseConfig:
    url: URL
    dialect: Literal["sqlite", "postgresql"]
    max_conns: int
    min_conns: int
    sqlite_path: Path | None = None

    @property
    def display(self) -> str:
        """The URL with its password hidden, for logs and error messages."""
        return self.url.render_as_string(hide_password=True)


def resolve_database(settings: Settings) -> DatabaseConfig:
    """Build the database configuration from settings.

    Raises:
        DatabaseUrlError: when the URL is malformed or names an unsupported database.
    """
    if settings.database_url is None:
        path = settings.data_dir / "forgehall.db"
        return DatabaseConfig(
            url=URL.create("sqlite+aiosqlite", database=str(path)),
            dialect="sqlite",
            max_conns=1,
            min_conns=1,
            sqlite_path=path,
        )
    text = settings.database_url.strip()
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseUrlError(
            "DATABASE_URL is not a valid URL (expected postgresql://user:pass@host:5432/db "
            "or sqlite:///path/to/file.db)"
        ) from exc
    scheme = url.drivername
    if scheme in _SQLITE_SCHEMES:
        if not url.database or url.database == ":memory:":
            raise DatabaseUrlError(
                "DATABASE_URL sqlite URLs need a file path, e.g. sqlite:////var/lib/forgehall.db"
            )
        path = Path(url.database).expanduser()
        return DatabaseConfig(
            url=url.set(drivername="sqlite+aiosqlite", database=str(path), query={}),
            dialect="sqlite",
            max_conns=1,
            min_conns=1,
            sqlite_path=path,
        )
    if scheme not in _POSTGRES_SCHEMES:
        raise DatabaseUrlError(
            f"DATABASE_URL scheme {scheme!r} is not supported; use postgresql:// or sqlite://"
        )
    if not url.host or not url.database:
        raise DatabaseUrlError(
            "DATABASE_URL must name a host and a database, e.g. "
            "postgresql://user:pass@db.example.com:5432/forgehall"
        )
    query = dict(url.query)
    url_max = _pool_param(query.pop("pool_max_conns", None), "pool_max_conns")
    url_min = _pool_param(query.pop("pool_min_conns", None), "pool_min_conns")
    # asyncpg names TLS "ssl"; accept the libpq spelling people paste from elsewhere.
    if "sslmode" in query:
        query["ssl"] = query.pop("sslmode")
    max_conns = settings.database_max_conns or url_max or DEFAULT_MAX_CONNS
    min_conns = settings.database_min_conns
    if min_conns is None:
        min_conns = url_min if url_min is not None else DEFAULT_MIN_CONNS
    return DatabaseConfig(
        url=url.set(drivername="postgresql+asyncpg", query=query),
        dialect="postgresql",
        max_conns=max_conns,
        min_conns=min(min_conns, max_conns),
    )


def _pool_param(value: str | tuple[str, ...] | None, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, tuple):
        value = value[-1]
    if not value.isdigit() or int(value) < (1 if name == "pool_max_conns" else 0):
        raise DatabaseUrlError(f"DATABASE_URL parameter {name}={value!r} is not a valid count")
    return int(value)
