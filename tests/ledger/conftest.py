"""Server-ledger tests store the signing key encrypted: their settings carry a key."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from forgehall.settings import Settings
from tests.conftest import make_settings


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path, database_url=database_url, encryption_key=Fernet.generate_key().decode()
    )
