"""The SQL store's durable memory (`tether.memory`): versioned keys and content-addressed blobs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import MemoryConflictError, StoreError
from ._base import (
    MemoryRow,
)
from ._sql_common import SqlBase, conditions, marks

MEMORY_COLUMNS = (
    "scope, scope_id, key, version, deleted, blob, base_version, items, length, size, "
    "created_at, writer_execution, writer_position, idempotency_key"
)

# The next version number of the key is computed in the statement that inserts it; a
# concurrent writer that took the same number makes it insert nothing (ON CONFLICT), and the
# caller tries again. The last parameter (if not NULL) is the version the key must be at.
# NULL integers are cast: Postgres types a bare NULL parameter as text. (The writer's position
# is text: "3.1.2".)
INSERT_MEMORY = f"""
INSERT INTO memory ({MEMORY_COLUMNS})
SELECT ?, ?, ?, m.latest + 1, ?, ?, CAST(? AS INTEGER), ?, CAST(? AS INTEGER),
    ?, ?, ?, CAST(? AS TEXT), ?
FROM (SELECT coalesce(max(version), 0) AS latest FROM memory
      WHERE scope = ? AND scope_id = ? AND key = ?) AS m
WHERE m.latest = coalesce(CAST(? AS INTEGER), m.latest)
ON CONFLICT DO NOTHING
RETURNING {MEMORY_COLUMNS}
"""

_MEMORY_WRITE_TRIES = 1000
_BLOB_BATCH = 500


def memory_row(r: Sequence[Any]) -> MemoryRow:
    row = MemoryRow(*r)
    row.deleted = bool(row.deleted)
    return row


class MemorySql(SqlBase):
    """The SQL store's durable memory: versioned keys and content-addressed blobs."""

    def put_memory(
        self,
        row: MemoryRow,
        blobs: Sequence[tuple[str, str]] = (),
        *,
        fence: tuple[str, str] | None = None,
        if_version: int | None = None,
    ) -> MemoryRow | None:
        params = (
            row.scope, row.scope_id, row.key, int(row.deleted), row.blob, row.base_version,
            row.items, row.length, row.size, row.created_at, row.writer_execution,
            row.writer_position, row.idempotency_key, row.scope, row.scope_id, row.key,
            if_version,
        )  # fmt: skip
        with self._transaction() as conn:
            if fence is not None:
                # Locked (Postgres) so that a takeover cannot commit between this check and
                # the write: a process that lost its lease writes nothing, as with checkpoints.
                held = self._run(
                    conn,
                    f"SELECT 1 FROM executions WHERE id = ? AND lease_token = ?{self.lock_row}",
                    fence,
                ).fetchone()
                if held is None:
                    return None
            if blobs:
                # In hash order: writers sharing blobs take their index locks (Postgres) in
                # the same order, so they wait for each other instead of deadlocking.
                self._executemany(
                    conn,
                    "INSERT INTO blobs (hash, data) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    sorted(dict(blobs).items()),
                )
            for _ in range(_MEMORY_WRITE_TRIES):
                if row.idempotency_key is not None:
                    found = self._run(
                        conn,
                        f"SELECT {MEMORY_COLUMNS} FROM memory WHERE idempotency_key = ?",
                        (row.idempotency_key,),
                    ).fetchone()
                    if found is not None:
                        return memory_row(found)
                inserted = self._run(conn, INSERT_MEMORY, params).fetchone()
                if inserted is not None:
                    return memory_row(inserted)
                if if_version is not None:
                    latest = self._run(
                        conn,
                        "SELECT coalesce(max(version), 0) FROM memory "
                        "WHERE scope = ? AND scope_id = ? AND key = ?",
                        (row.scope, row.scope_id, row.key),
                    ).fetchone()[0]
                    if int(latest) != if_version:
                        raise MemoryConflictError(row.key, if_version, int(latest))
                # Another writer took that version number, or wrote this idempotency key.
                # (Postgres, READ COMMITTED: ON CONFLICT waited for it to commit, and the next
                # statement sees it; SQLite serializes writers, so this does not happen.)
        raise StoreError(
            f"could not store a version of memory key {row.key!r} after "
            f"{_MEMORY_WRITE_TRIES} tries: too many concurrent writers of that key"
        )

    def get_memory(
        self, scope: str, scope_id: str, key: str, version: int | None = None
    ) -> MemoryRow | None:
        which = "" if version is None else "AND version = ? "
        params = (scope, scope_id, key) if version is None else (scope, scope_id, key, version)
        found = self._one(
            f"SELECT {MEMORY_COLUMNS} FROM memory WHERE scope = ? AND scope_id = ? AND key = ? "
            f"{which}ORDER BY version DESC LIMIT 1",
            params,
        )
        return memory_row(found) if found else None

    def memory_versions(
        self, scope: str, scope_id: str, key: str, *, up_to: int | None = None
    ) -> list[MemoryRow]:
        which = "" if up_to is None else "AND version <= ? "
        params = (scope, scope_id, key) if up_to is None else (scope, scope_id, key, up_to)
        rows = self._all(
            f"SELECT {MEMORY_COLUMNS} FROM memory WHERE scope = ? AND scope_id = ? AND key = ? "
            f"{which}ORDER BY version DESC",
            params,
        )
        return [memory_row(r) for r in rows]

    def list_memory(
        self, *, scope: str | None, scope_id: str | None, prefix: str | None, limit: int
    ) -> list[MemoryRow]:
        found, params = conditions(
            (("m.scope", scope), ("m.scope_id", scope_id)), ("m.key", prefix)
        )
        where = ["m.deleted = 0", *found]
        params.append(limit)
        rows = self._all(
            f"SELECT {MEMORY_COLUMNS} FROM memory m WHERE {' AND '.join(where)} AND m.version = "
            "(SELECT max(x.version) FROM memory x WHERE x.scope = m.scope "
            "AND x.scope_id = m.scope_id AND x.key = m.key) "
            "ORDER BY m.scope, m.scope_id, m.key LIMIT ?",
            params,
        )
        return [memory_row(r) for r in rows]

    def get_blobs(self, hashes: Sequence[str]) -> dict[str, str]:
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, str] = {}
        with self._connection() as conn:
            for start in range(0, len(wanted), _BLOB_BATCH):
                batch = wanted[start : start + _BLOB_BATCH]
                rows = self._run(
                    conn, f"SELECT hash, data FROM blobs WHERE hash IN ({marks(batch)})", batch
                ).fetchall()
                found.update((str(h), str(d)) for h, d in rows)
        return found
