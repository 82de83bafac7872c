"""Database URL resolution and pool sizing precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgehall.db.url import DatabaseUrlError, resolve_database
from forgehall.settings import Settings


def test_default_is_embedded_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    config = resolve_database(Settings(data_dir=tmp_path))
    assert config.dialect == "sqlite"
    assert config.sqlite_path == tmp_path / "forgehall.db"
    assert config.url.drivername == "sqlite+aiosqlite"


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+asyncpg"])
def test_postgres_schemes_use_asyncpg(scheme: str) -> None:
    config = resolve_database(Settings(database_url=f"{scheme}://u:p@db.local:5433/fh"))
    assert config.dialect == "postgresql"
    assert config.url.drivername == "postgresql+asyncpg"
    assert (config.url.host, config.url.port, config.url.database) == ("db.local", 5433, "fh")
    assert "p@" not in config.display


def test_pool_defaults() -> None:
    config = resolve_database(Settings(database_url="postgresql://u@h/db"))
    assert (config.max_conns, config.min_conns) == (25, 5)


def test_pool_url_parameters_override_defaults_and_are_stripped() -> None:
    config = resolve_database(
        Settings(
            database_url="postgresql://u@h/db?pool_max_conns=40&pool_min_conns=10&sslmode=require"
        )
    )
    assert (config.max_conns, config.min_conns) == (40, 10)
    assert dict(config.url.query) == {"ssl": "require"}


def test_environment_overrides_url_parameters() -> None:
    config = resolve_database(
        Settings(
            database_url="postgresql://u@h/db?pool_max_conns=40&pool_min_conns=10",
            database_max_conns=12,
            database_min_conns=2,
        )
    )
    assert (config.max_conns, config.min_conns) == (12, 2)


def test_min_is_clamped_to_max() -> None:
    config = resolve_database(
        Settings(database_url="postgresql://u@h/db?pool_min_conns=50", database_max_conns=8)
    )
    assert (config.max_conns, config.min_conns) == (8, 8)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "not a valid URL"),
        ("mysql://u@h/db", "not supported"),
        ("postgresql:///db", "must name a host"),
        ("postgresql://u@h/db?pool_max_conns=many", "pool_max_conns"),
        ("postgresql://u@h/db?pool_max_conns=0", "pool_max_conns"),
        ("sqlite://", "need a file path"),
    ],
)
def test_malformed_urls_are_explained(url: str, message: str) -> None:
    with pytest.raises(DatabaseUrlError, match=message):
        resolve_database(Settings(database_url=url))


def test_sqlite_url_with_path(tmp_path: Path) -> None:
    config = resolve_database(Settings(database_url=f"sqlite:///{tmp_path}/x.db"))
    assert config.sqlite_path == tmp_path / "x.db"
