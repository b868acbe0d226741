"""API tokens of `tether server`: created, listed, revoked and checked through `Client`.

A token is `tether_` + 43 url-safe characters of a 256-bit random secret. The store keeps
only its sha256 (a secret this long needs no slow hash: there is nothing to guess), so a
leaked database gives no usable token; the secret is shown once, when it is created.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Final

from .._core.config import settings
from ..errors import UsageError
from ..store import Store, TokenRow

#: What each scope may do, each including the ones before it.
SCOPES: Final = ("read", "operate", "admin")
PREFIX: Final = "tether_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """An API token as listed: its name, scope, and when it was created (and revoked)."""

    name: str
    scope: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: str) -> bool:
        """Whether this token's scope covers `scope` (admin > operate > read)."""
        return SCOPES.index(self.scope) >= SCOPES.index(scope)

    @classmethod
    def from_row(cls, row: TokenRow) -> TokenInfo:
        revoked = row.revoked_at
        return cls(
            row.name,
            row.scope,
            dt.datetime.fromtimestamp(row.created_at, dt.UTC),
            None if revoked is None else dt.datetime.fromtimestamp(revoked, dt.UTC),
        )


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def create(store: Store, name: str, scope: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"token name {name!r} is not valid: use 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    if scope not in SCOPES:
        raise UsageError(f"unknown scope {scope!r}; choose from {', '.join(SCOPES)}")
    secret = PREFIX + secrets.token_urlsafe(32)
    if not store.create_token(TokenRow(name, digest(secret), scope, time.time())):
        raise UsageError(
            f"a token named {name!r} exists already; revoke it first "
            f"(`tether tokens revoke {name}`) or choose another name"
        )
    return secret


def check(store: Store, secret: str) -> TokenInfo | None:
    """The active token whose secret this is, or None."""
    if not secret.startswith(PREFIX):
        return None
    row = store.token_by_hash(digest(secret))
    if row is None or row.revoked_at is not None:
        return None
    return TokenInfo.from_row(row)


def revoke(store: Store, name: str) -> None:
    if not store.revoke_token(name, now=time.time()):
        active = ", ".join(t.name for t in store.list_tokens() if t.revoked_at is None)
        raise UsageError(
            f"no active token named {name!r} (active tokens: {active or 'none'}); "
            "`tether tokens list` shows them"
        )


def signing_keys(store: Store) -> dict[str, tuple[TokenInfo, bytes]]:
    """The active tokens by name, each with a key for signing what stands for it (a
    dashboard session's cookie). The key is derived from the hash the store keeps: every
    process on the store derives the same one, without a secret of its own to share, and
    revoking the token (or a new token under its name) voids every signature made with it.

    With `TETHER_SECRET` set (the same on every server process) the key mixes it in: then
    reading the store is not enough to forge a session, as it is not enough to use a token."""
    secret = settings().secret or b""
    return {
        r.name: (TokenInfo.from_row(r), _signing_key(r, secret))
        for r in store.list_tokens()
        if r.revoked_at is None
    }


def _signing_key(row: TokenRow, secret: bytes) -> bytes:
    # Keyed by the token's stored hash, and by the secret too when there is one.
    material = row.hash.encode() + (b"\0" + secret if secret else b"")
    return hmac.new(material, b"tether dashboard session", hashlib.sha256).digest()
