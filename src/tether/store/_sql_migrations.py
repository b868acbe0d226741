"""The SQL store's schema: versioned DDL migrations, applied once per database; and the
checks that decide whether a database may be opened at all (it is tether's, and its schema
fits this code), made before anything is written to it."""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Iterator
from importlib import resources

from ..errors import NotATetherStore, StoreVersionError
from ._sql_common import Connection, SqlBase

SCHEMA_TABLE = "tether_schema"
_CREATED = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.IGNORECASE)


def migrations(dialect: str) -> tuple[tuple[str, str], ...]:
    """The dialect's migrations, (file name, SQL) in order; the schema version of a database
    is how many of them it has applied."""
    folder = resources.files("tether.store").joinpath(f"migrations/{dialect}")
    found = [(e.name, e.read_text()) for e in folder.iterdir() if e.name.endswith(".sql")]
    return tuple(sorted(found))


def tether_tables(dialect: str) -> frozenset[str]:
    """The tables tether's migrations create (tether_schema included)."""
    names = {m.lower() for _, sql in migrations(dialect) for m in _CREATED.findall(sql)}
    return frozenset(names | {SCHEMA_TABLE})


def check_opening(
    where: str,
    dialect: str,
    tables: Collection[str],
    version: int | None,
    *,
    readonly: bool,
    any_table_is_foreign: bool,
) -> bool:
    """Whether a database may be opened, from what it holds: `tables` (its table names) and
    `version` (its schema version, None without tether_schema). Returns whether it is new
    (nothing of anyone's in it: a write open creates tether's tables); raises when it is
    someone else's (NotATetherStore) or its schema does not fit (StoreVersionError).
    `any_table_is_foreign`: a SQLite file is one application's, so any table but tether's
    makes it foreign; a PostgreSQL database is shared, so only tables named like tether's
    are (creating tether's tables beside them would mix two applications' rows)."""
    known = len(migrations(dialect))
    if version is None:
        ours = tether_tables(dialect)
        theirs = sorted(
            t for t in tables
            if (any_table_is_foreign and not t.startswith("sqlite_")) or t.lower() in ours
        )  # fmt: skip
        if theirs:
            shown = ", ".join(theirs[:5]) + (" and more" if len(theirs) > 5 else "")
            raise NotATetherStore(
                f"{where} is not a tether database: it holds tables of another application "
                f"({shown}) and no {SCHEMA_TABLE}. Nothing was written to it. Point --db / "
                "TETHER_DB at tether's own database (a new file, or a database of its own)."
            )
        if readonly:
            raise NotATetherStore(
                f"{where} has no tether tables: it is not a tether database, or tether has "
                "never written to it. Reading commands do not create them; the first run() of "
                "a flow or `tether worker --create` does."
            )
        return True
    if version > known:
        raise StoreVersionError(
            f"{where} has schema version {version}, newer than this tether's {known}: a newer "
            "tether wrote it. Upgrade tether (pip install -U tether) to open it; nothing was "
            "written.",
            found=version,
            known=known,
        )
    if readonly and version < known:
        raise StoreVersionError(
            f"{where} has schema version {version}, older than this tether's {known}, and a "
            "store opened read-only is never upgraded. Open it once for writing (a flow's "
            "run(), `tether worker`, any command that changes an execution) to upgrade it, "
            "or read it with the tether that wrote it.",
            found=version,
            known=known,
        )
    return False


class MigrationsSql(SqlBase):
    """The SQL store's schema: versioned DDL migrations, applied once per database."""

    #: whether any table but tether's makes a database someone else's (see check_opening)
    any_table_is_foreign = False

    def _tables(self, conn: Connection) -> set[str]:
        """The names of the database's tables (those a query without a schema sees)."""
        raise NotImplementedError

    def _schema_version(self, conn: Connection, tables: Collection[str]) -> int | None:
        if SCHEMA_TABLE not in tables:
            return None
        found = self._run(conn, f"SELECT coalesce(max(version), 0) FROM {SCHEMA_TABLE}")
        return int(found.fetchone()[0])

    def _check_readable(self) -> None:
        """A read-only open: the database must be tether's, with this code's schema; nothing
        is created, migrated or locked."""
        with self._connection() as conn:
            tables = self._tables(conn)
            version = self._schema_version(conn, tables)
        check_opening(
            self.url_shown, self.dialect, tables, version,
            readonly=True, any_table_is_foreign=self.any_table_is_foreign,
        )  # fmt: skip

    @property
    def url_shown(self) -> str:
        """The store's URL as errors show it (without a password)."""
        return self.url

    def _migrate(self) -> None:
        migrations_ = migrations(self.dialect)
        with self._transaction() as conn:
            self._lock_for_migration(conn)
            # Checked inside the migration's transaction (and lock): another process may
            # have created tether's tables, or someone else's, since the store was looked at.
            tables = self._tables(conn)
            version = self._schema_version(conn, tables)
            check_opening(
                self.url_shown, self.dialect, tables, version,
                readonly=False, any_table_is_foreign=self.any_table_is_foreign,
            )  # fmt: skip
            current = version or 0
            self._run(
                conn,
                f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION "
                "NOT NULL)",
            )
            for version, (name, sql) in enumerate(migrations_, start=1):
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
