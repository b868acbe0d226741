"""Who is using the dashboard: a session cookie, with a CSRF token for every form.

A browser cannot send a Bearer header with a link or a form, so the dashboard signs a
person in once (the login page takes a token, `tether tokens create`) and keeps a random
session id in an HttpOnly, SameSite=Strict cookie. While no token exists, a loopback
browser is let in without logging in, as the API lets loopback clients in; it still gets
a session, because its CSRF token is what stops another site's page from posting forms
to a dashboard on 127.0.0.1.

Sessions live in this process (a restart signs everyone out). Each request checks the
session's token again, so revoking a token ends its sessions at once.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from fastapi import Request

from .._ops.client import Client
from .._ops.tokens import SCOPES
from ._auth import LOCAL, is_loopback

COOKIE = "tether_session"
_LIFETIME = 12 * 3600.0
_MAX_SESSIONS = 10_000  # a flood of anonymous visits must not grow memory without end


@dataclass(slots=True)
class Session:
    id: str
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


class Sessions:
    def __init__(self, client: Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}

    def _new(self, name: str | None = None, scope: str | None = None) -> Session:
        now = time.time()
        session = Session(
            secrets.token_urlsafe(32), secrets.token_urlsafe(32), now + _LIFETIME, name, scope
        )
        session.fresh = True
        with self._lock:
            if len(self._by_id) >= _MAX_SESSIONS:
                self._by_id = {k: s for k, s in self._by_id.items() if s.expires > now}
                if len(self._by_id) >= _MAX_SESSIONS:  # still full: drop the oldest
                    for key in sorted(self._by_id, key=lambda k: self._by_id[k].expires)[:100]:
                        del self._by_id[key]
            self._by_id[session.id] = session
        return session

    def _find(self, request: Request) -> Session | None:
        key = request.cookies.get(COOKIE)
        if not key:
            return None
        with self._lock:
            session = self._by_id.get(key)
            if session is not None and session.expires <= time.time():
                del self._by_id[key]
                return None
        return session

    def anonymous(self, request: Request) -> Session:
        """The request's session, or a new one that is not signed in (the login page's)."""
        return self._find(request) or self._new()

    def viewer(self, request: Request) -> Session:
        """The session of someone who may read the dashboard; Refused otherwise."""
        tokens = {t.name: t for t in self._client.tokens() if t.active}
        session = self._find(request)
        if not tokens:
            if not is_loopback(request.client.host if request.client else None):
                raise Refused(
                    "the dashboard answers only this machine while no API token exists; "
                    "create one with `tether tokens create --name NAME --scope operate` and "
                    "sign in with it",
                    login=False,
                )
            # Open: whoever signed in before the last token was revoked is `local` now.
            session = session or self._new()
            session.name, session.scope = LOCAL, "admin"
            return session
        if session is None or session.name is None:
            raise Refused("sign in with an API token", login=True)
        token = tokens.get(session.name)
        if token is None or token.scope != session.scope:
            self.end(session)
            raise Refused(f"token {session.name!r} was revoked; sign in again", login=True)
        return session

    def sign_in(self, request: Request, secret: str) -> Session | None:
        """A new signed-in session for the token `secret` (the old one ends: a session id
        seen before signing in is never the one that carries the rights)."""
        token = self._client.authenticate(secret.strip()) if secret.strip() else None
        if token is None:
            return None
        old = self._find(request)
        if old is not None:
            self.end(old)
        return self._new(token.name, token.scope)

    def end(self, session: Session) -> None:
        with self._lock:
            self._by_id.pop(session.id, None)


def csrf_ok(session: Session | None, given: str | None) -> bool:
    if session is None or not given:
        return False
    return hmac.compare_digest(session.csrf.encode(), given.encode())


def may(session: Session, scope: str) -> bool:
    return session.scope is not None and SCOPES.index(session.scope) >= SCOPES.index(scope)
