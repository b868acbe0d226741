"""Stores: where executions live. `open_store(url)` picks one from the URL."""

from __future__ import annotations

import os

from ..errors import ConfigurationError
from ._base import (
    CheckpointOutline,
    CheckpointRow,
    ChildStart,
    Claim,
    Commit,
    EventRow,
    ExecutionRow,
    ExecutionStats,
    MemoryRow,
    MessageRow,
    PendingWaitRow,
    ScheduleRow,
    Sent,
    Store,
    TokenRow,
    WaitRow,
    memory_write_key,
)
from ._redact import redact

__all__ = [
    "CheckpointOutline",
    "CheckpointRow",
    "Claim",
    "ChildStart",
    "Commit",
    "EventRow",
    "ExecutionRow",
    "ExecutionStats",
    "MemoryRow",
    "MessageRow",
    "PendingWaitRow",
    "ScheduleRow",
    "Sent",
    "Store",
    "TokenRow",
    "WaitRow",
    "exists",
    "memory_write_key",
    "open_store",
    "redact",
]


def exists(url: str) -> bool:
    """False when the URL names a SQLite file that does not exist (opening would create it);
    True otherwise (a server store is checked by connecting to it)."""
    if url.partition("://")[0] == "sqlite":
        from .sqlite import path_from_url

        return os.path.exists(path_from_url(url))
    return True


def open_store(
    url: str, *, durability: str = "normal", busy_timeout: float = 60.0, readonly: bool = False
) -> Store:
    """Open the store a URL names: `sqlite:///relative.db`, `sqlite:////abs/path.db`, or
    `postgresql://user:password@host:5432/dbname` (needs the PostgreSQL driver:
    `pip install -e '.[postgres]'` in a clone of tether).
    `busy_timeout`: seconds a SQLite write waits for another connection's lock.

    Opening checks, before writing anything, that the database is tether's (a file that is
    not SQLite, another application's SQLite file or a PostgreSQL database whose tether-named
    tables are someone else's is `NotATetherStore`, left as it was) and that its schema is
    not newer than this code (`StoreVersionError`); a damaged file is `StoreCorrupt`. A
    writable open creates a missing SQLite file and brings the schema up to date.
    `readonly=True` writes nothing at all: no file is created, no migration runs, the journal
    mode stays (works on read-only media and for a PostgreSQL role that may only SELECT); the
    database must already be tether's at this code's schema, and a write raises
    `StoreOpenedReadOnly`."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigurationError(
            f"store URL {redact(url)!r} has no scheme; use sqlite:///path/to/tether.db"
        )
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(url, durability=durability, busy_timeout=busy_timeout, readonly=readonly)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url, readonly=readonly)
    raise ConfigurationError(
        f"unknown store scheme {scheme!r} in {redact(url)!r}; use sqlite:///path or "
        "postgresql://..."
    )
