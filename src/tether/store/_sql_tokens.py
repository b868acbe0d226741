"""The SQL store's API tokens (`tether server`): hashes and scopes, never secrets."""

from __future__ import annotations

from ._base import TokenRow
from ._sql_common import SqlBase

_COLUMNS = "name, hash, scope, created_at, revoked_at"


class TokensSql(SqlBase):
    """The SQL store's API tokens (`tether server`): hashes and scopes, never secrets."""

    def create_token(self, row: TokenRow) -> bool:
        return (
            self._count(
                f"INSERT INTO api_tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, NULL) "
                "ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, scope = excluded.scope, "
                "created_at = excluded.created_at, revoked_at = NULL "
                "WHERE api_tokens.revoked_at IS NOT NULL",
                (row.name, row.hash, row.scope, row.created_at),
            )
            == 1
        )

    def list_tokens(self) -> list[TokenRow]:
        rows = self._all(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY name")
        return [TokenRow(*r) for r in rows]

    def token_by_hash(self, hash: str) -> TokenRow | None:
        found = self._one(f"SELECT {_COLUMNS} FROM api_tokens WHERE hash = ?", (hash,))
        return None if found is None else TokenRow(*found)

    def revoke_token(self, name: str, *, now: float) -> bool:
        return (
            self._count(
                "UPDATE api_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (now, name),
            )
            == 1
        )
