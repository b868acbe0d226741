"""Who is asking: Bearer tokens (`tether tokens create`), or, while the store has no
active token, any client on the loopback interface.

A request's principal is the token (name and scope) it carries. Without tokens the server
only listens on a loopback address (`serve()` refuses anything else), and a request from
elsewhere (through a proxy, say) is still refused here, as is one that names another host
(Host, Origin): nobody off this machine gets in by default, not even through a browser on
it that a DNS rebinding points here. Once a token exists every request needs one, loopback or not.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from .._ops.client import Client
from .._ops.tokens import SCOPES

LOCAL = "local"  # who gave input when no token is configured


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scope: str

    def allows(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)


class AuthError(Exception):
    """A refused request: 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def addressed_locally(request: HTTPConnection) -> bool:
    """Whether the request names this machine (Host, and Origin when sent) as loopback.

    What a tokenless server needs beyond a loopback peer: after a DNS rebinding, a page of
    another site reaches 127.0.0.1 from the visitor's own browser, under its own name."""
    if not is_loopback(_hostname(request.headers.get("host", ""))):
        return False
    origin = request.headers.get("origin")
    return origin is None or is_loopback(_hostname(origin.partition("://")[2]))


def _hostname(netloc: str) -> str:
    if netloc.startswith("["):  # [::1]:8787
        return netloc.partition("]")[0] + "]"
    return netloc.rsplit(":", 1)[0]


def principal(client: Client, request: HTTPConnection, scope: str) -> Principal:
    """The principal of `request`, if it may do what needs `scope`; else AuthError."""
    header = request.headers.get("authorization")
    if header is None:
        if any(t.active for t in client.tokens()):
            raise AuthError(
                401,
                "Unauthorized",
                "this server needs a token: send `Authorization: Bearer <token>` (create one "
                "with `tether tokens create --name NAME --scope read|operate|admin`)",
            )
        host = request.client.host if request.client is not None else None
        if not is_loopback(host):
            raise AuthError(
                401,
                "Unauthorized",
                f"requests from {host or 'an unknown address'} need a token, and none is "
                "configured; create one with `tether tokens create`",
            )
        if not addressed_locally(request):
            raise AuthError(
                403,
                "Forbidden",
                "without a token this server answers only requests addressed to localhost or "
                "a loopback address (another name resolving here is how a page of another "
                "site would reach it: DNS rebinding); use http://127.0.0.1:PORT or create a "
                "token with `tether tokens create`",
            )
        return Principal(LOCAL, "admin")
    kind, _, secret = header.partition(" ")
    if kind.lower() != "bearer" or not secret.strip():
        raise AuthError(401, "Unauthorized", "the Authorization header is not `Bearer <token>`")
    token = client.authenticate(secret.strip())
    if token is None:
        raise AuthError(401, "Unauthorized", "unknown or revoked token")
    if not token.allows(scope):
        raise AuthError(
            403,
            "Forbidden",
            f"token {token.name!r} has scope {token.scope!r}; this needs {scope!r} "
            f"(create a token with `--scope {scope}`)",
        )
    return Principal(token.name, token.scope)
