"""The SQL store's schema: versioned DDL migrations, applied once per database."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from importlib import resources

from ..errors import StoreError
from ._redact import redact
from ._sql_common import SqlBase


class MigrationsSql(SqlBase):
    """The SQL store's schema: versioned DDL migrations, applied once per database."""

    def _migrate(self) -> None:
        folder = resources.files("tether.store").joinpath(f"migrations/{self.dialect}")
        migrations = sorted(
            (entry.name, entry.read_text()) for entry in folder.iterdir()
            if entry.name.endswith(".sql")
        )  # fmt: skip
        known = len(migrations)
        with self._transaction() as conn:
            self._lock_for_migration(conn)
            self._run(
                conn,
                "CREATE TABLE IF NOT EXISTS tether_schema ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION "
                "NOT NULL)",
            )
            found = self._run(conn, "SELECT coalesce(max(version), 0) FROM tether_schema")
            current = int(found.fetchone()[0])
            if current > known:
                raise StoreError(
                    f"{redact(self.url)} has schema version {current}, but this tether knows only "
                    f"{known}; upgrade tether to open it"
                )
            for version, (name, sql) in enumerate(migrations, start=1):
                if version <= current:
                    continue
                for statement in statements(sql):
                    self._run(conn, statement)
                self._run(
                    conn,
                    "INSERT INTO tether_schema (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, time.time()),
                )


def statements(sql: str) -> Iterator[str]:
    """Split a migration file into statements: on semicolons, except inside $$ bodies and
    inside the BEGIN ... END body of a SQLite trigger."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    text = "\n".join(lines)
    current: list[str] = []
    for i, chunk in enumerate(text.split("$$")):
        if i % 2:  # inside a $$ ... $$ body
            current.append(f"$${chunk}$$")
            continue
        parts = chunk.split(";")
        current.append(parts[0])
        for part in parts[1:]:
            statement = "".join(current)
            if _open_trigger(statement):
                current.append(";" + part)  # a statement of the trigger's body
                continue
            if statement.strip():
                yield statement
            current = [part]
    if "".join(current).strip():
        yield "".join(current)


def _open_trigger(statement: str) -> bool:
    """A SQLite `CREATE TRIGGER ... BEGIN` whose body has not reached its `END` yet."""
    text = statement.strip().upper()
    return (
        text.startswith("CREATE TRIGGER")
        and re.search(r"\bBEGIN\b", text) is not None
        and re.search(r"\bEND$", text) is None
    )
