"""Who is using the dashboard: a session cookie, with a CSRF token for every form.

A browser cannot send a Bearer header with a link or a form, so the dashboard signs a
person in once (the login page takes a token, `tether tokens create`) and keeps the session
in an HttpOnly, SameSite=Strict cookie. While no token exists, a loopback browser is let in
without signing in, as the API lets loopback clients in; it still gets a session, because
its CSRF token is what stops another site's page from posting forms to a dashboard on
127.0.0.1.

Nothing of a session lives in the server process: the cookie names the token, its expiry
and a random nonce, signed with a key derived from the token's stored hash
(`Client.token_signing_keys`). So a session survives a restart and is good on every server
process of the store, a forged or altered cookie fails its signature, and each request looks
the token up again: revoking it (or a new token under its name) ends its sessions at once.
The token's scope is read from the store, never from the cookie. A session that is not
signed in (the login page's, or everyone's while no token exists) carries only its nonce,
which is its CSRF token: a page of another site can neither read the cookie nor set it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import Request

from .._ops.client import Client
from .._ops.tokens import SCOPES, TokenInfo
from ._auth import LOCAL, addressed_locally, is_loopback

COOKIE = "tether_session"
LIFETIME = 12 * 3600
_VERSION = "v1"
_SIGNED, _ANONYMOUS = "t", "a"
_SEP = "~"  # not in a token's name, and a cookie value may hold it unquoted


@dataclass(slots=True)
class Session:
    id: str  # the cookie's value
    csrf: str
    expires: float
    name: str | None = None  # the token's name once signed in; LOCAL when open
    scope: str | None = None
    fresh: bool = False  # created by this request: the response sets the cookie


class Refused(Exception):
    """The request may not see the dashboard: `login` says whether signing in would help."""

    def __init__(self, message: str, *, login: bool) -> None:
        super().__init__(message)
        self.message, self.login = message, login


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _mac(key: bytes, purpose: str, *parts: str) -> str:
    message = _SEP.join((purpose, *parts)).encode()
    return _b64(hmac.new(key, message, hashlib.sha256).digest())


@dataclass(frozen=True, slots=True)
class _Cookie:
    kind: str
    name: str
    expires: int
    nonce: str
    mac: str

    @classmethod
    def parse(cls, value: str | None) -> _Cookie | None:
        parts = (value or "").split(_SEP)
        if len(parts) != 6 or parts[0] != _VERSION or parts[1] not in (_SIGNED, _ANONYMOUS):
            return None
        _, kind, coded, expires, nonce, mac = parts
        if not expires.isdigit() or int(expires) <= time.time() or len(nonce) < 32:
            return None
        try:
            name = base64.urlsafe_b64decode(coded + "=" * (-len(coded) % 4)).decode()
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            return None
        return cls(kind, name, int(expires), nonce, mac)

    def fields(self) -> tuple[str, ...]:
        # The name in base64: a token's name may hold `@`, which a cookie value would quote.
        return (self.kind, _b64(self.name.encode()), str(self.expires), self.nonce)


class Sessions:
    def __init__(self, client: Client) -> None:
        self._client = client

    def _anonymous(self) -> Session:
        expires = int(time.time()) + LIFETIME
        nonce = secrets.token_urlsafe(32)
        value = _SEP.join((_VERSION, _ANONYMOUS, "", str(expires), nonce, ""))
        return Session(value, nonce, expires, fresh=True)

    def _signed(self, name: str, scope: str, key: bytes) -> Session:
        expires = int(time.time()) + LIFETIME
        cookie = _Cookie(_SIGNED, name, expires, secrets.token_urlsafe(32), "")
        mac = _mac(key, "session", *cookie.fields())
        value = _SEP.join((_VERSION, *cookie.fields(), mac))
        return Session(value, _mac(key, "csrf", cookie.nonce), expires, name, scope, fresh=True)

    def _read(self, request: Request) -> _Cookie | None:
        return _Cookie.parse(request.cookies.get(COOKIE))

    def anonymous(self, request: Request) -> Session:
        """The request's session, or a new one that is not signed in (the login page's)."""
        cookie = self._read(request)
        if cookie is None:
            return self._anonymous()
        if cookie.kind == _ANONYMOUS:
            return Session(request.cookies[COOKIE], cookie.nonce, cookie.expires)
        found = self._verified(cookie, self._client.token_signing_keys())
        return found if found is not None else self._anonymous()

    def _verified(
        self, cookie: _Cookie, keys: dict[str, tuple[TokenInfo, bytes]]
    ) -> Session | None:
        """The signed-in session `cookie` stands for, if its token is active and it is
        signed with that token's key."""
        if cookie.kind != _SIGNED or cookie.name not in keys:
            return None
        token, key = keys[cookie.name]
        if not hmac.compare_digest(cookie.mac, _mac(key, "session", *cookie.fields())):
            return None
        value = _SEP.join((_VERSION, *cookie.fields(), cookie.mac))
        csrf = _mac(key, "csrf", cookie.nonce)
        return Session(value, csrf, cookie.expires, token.name, token.scope)

    def viewer(self, request: Request) -> Session:
        """The session of someone who may read the dashboard; Refused otherwise."""
        keys = self._client.token_signing_keys()
        cookie = self._read(request)
        if not keys:
            if not is_loopback(request.client.host if request.client else None):
                raise Refused(
                    "the dashboard answers only this machine while no API token exists; "
                    "create one with `tether tokens create --name NAME --scope operate` and "
                    "sign in with it",
                    login=False,
                )
            if not addressed_locally(request):
                raise Refused(
                    "while no API token exists the dashboard answers only pages opened as "
                    "localhost or a loopback address (another name pointing here is how a "
                    "page of another site would reach it); open http://127.0.0.1:PORT/",
                    login=False,
                )
            # Open: whoever signed in before the last token was revoked is `local` now.
            if cookie is not None and cookie.kind == _ANONYMOUS:
                session = Session(request.cookies[COOKIE], cookie.nonce, cookie.expires)
            else:
                session = self._anonymous()
            session.name, session.scope = LOCAL, "admin"
            return session
        if cookie is None or cookie.kind != _SIGNED:
            raise Refused("sign in with an API token", login=True)
        signed = self._verified(cookie, keys)
        if signed is None:
            raise Refused(
                f"the session of token {cookie.name!r} is no longer valid (the token was "
                "revoked, or the cookie is not one this server signed); sign in again",
                login=True,
            )
        return signed

    def sign_in(self, request: Request, secret: str) -> Session | None:
        """A new signed-in session for the token `secret`, with a new nonce: a cookie seen
        before signing in is never the one that carries the rights."""
        token = self._client.authenticate(secret.strip()) if secret.strip() else None
        if token is None:
            return None
        found = self._client.token_signing_keys().get(token.name)
        if found is None:  # revoked between the two reads
            return None
        return self._signed(token.name, token.scope, found[1])

    def end(self, session: Session) -> None:
        """Nothing to forget here: signing out clears the cookie (the dashboard's logout),
        and a copy of it lapses at its expiry or when its token is revoked."""


def csrf_ok(session: Session | None, given: str | None) -> bool:
    if session is None or not given:
        return False
    return hmac.compare_digest(session.csrf.encode(), given.encode())


def may(session: Session, scope: str) -> bool:
    return session.scope is not None and SCOPES.index(session.scope) >= SCOPES.index(scope)
