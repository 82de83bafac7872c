"""Database access: engines, sessions, column types, dialect helpers and migrations.

The only package that knows SQLite from PostgreSQL.
"""

from forgehall.db.base import Base
from forgehall.db.engine import Database

__all__ = ["Base", "Database"]
