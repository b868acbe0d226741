"""MCP over streamable HTTP at `/mcp`: the tools of `tether.mcp` (the ones `tether mcp`
serves over stdio), behind the API's Bearer tokens.

A token's scope picks the tool set: `read` gets the reading tools only, `operate` and
`admin` the operating ones too. Without a token (only while none exists, from loopback and
addressed as loopback, as the API) the server's `--mcp-mode` decides, `read` by default.
Two MCP servers are built once, one per tool set, and each request goes to the one its
principal may use: what a client cannot call, it is never offered.

Stateless transport with JSON answers: every request stands alone, so any of several
server processes behind a balancer can answer it, and a restart loses nothing. Input given
through a request is recorded with its token's name (`GIVER` in the ASGI scope).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from .._ops.client import Client
from ..errors import UsageError
from ._auth import LOCAL, AuthError, Principal, principal

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

PATH = "/mcp"
MODES = ("read", "operate")


class McpEndpoint:
    """The ASGI app at `/mcp`; `running()` belongs in the application's lifespan."""

    def __init__(self, client: Client, mode: str) -> None:
        if mode not in MODES:
            raise UsageError(f"unknown MCP mode {mode!r}; choose read or operate")
        self._client, self._mode = client, mode
        self._servers: dict[str, MCPServer] = {}
        self._missing: str | None = None
        try:
            from mcp.server.transport_security import TransportSecuritySettings

            from ..mcp._server import GIVER, build_server
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.partition(".")[0] not in ("mcp", "mcp_types"):
                raise
            self._missing = (
                "MCP over HTTP needs the mcp package on the server: pip install -e '.[mcp]' "
                "(from a clone of tether), or pip install 'mcp>=2'"
            )
            return
        self._giver_key = GIVER
        # The SDK's own Host check would refuse every name but localhost's, also behind a
        # real host name with tokens; `_auth.principal` checks the Host where it matters
        # (no token), and tokens guard the rest.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        for tools in MODES:
            server = build_server(client, "operate" if tools == "operate" else "read")
            # Called for its side effect: it creates the session manager that serves requests.
            server.streamable_http_app(
                stateless_http=True, json_response=True, transport_security=security
            )
            self._servers[tools] = server

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for server in self._servers.values():
                await stack.enter_async_context(server.session_manager.run())
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self._missing is not None:
            await _error(send, 501, "NotImplemented", self._missing)
            return
        request = Request(scope, receive)
        try:
            # A store read: off the event loop, as the API's routes run.
            who = await anyio.to_thread.run_sync(principal, self._client, request, "read")
        except AuthError as exc:
            await _error(send, exc.status, exc.kind, exc.message)
            return
        tools = self._tools(who)
        scope = {**scope, self._giver_key: who.name}
        await self._servers[tools].session_manager.handle_request(scope, receive, send)

    def _tools(self, who: Principal) -> str:
        if who.name == LOCAL:
            return self._mode
        return "operate" if who.allows("operate") else "read"


async def _error(send: Send, status: int, kind: str, message: str) -> None:
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
