"""`serve()`: what `tether server` runs."""

from __future__ import annotations

from collections.abc import Sequence

import uvicorn

from .._core import config as _config
from .._ops.client import Client
from ..errors import ConfigurationError, UsageError
from . import _flows, _mcp
from ._app import create_app
from ._auth import is_loopback


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    db: str | None = None,
    imports: Sequence[str] = (),
    poll: float = 0.25,
    stream_seconds: float = 300.0,
    mcp_mode: str = "read",
) -> None:
    """Serve the HTTP API until interrupted. The server only records and reads: it runs no
    execution itself (resume, retry, replay and started flows are queued for workers)."""
    if db:
        _config.configure(db=db)
    _config.configure(executor=False)
    client = Client(db)
    if not is_loopback(host) and not any(t.active for t in client.tokens()):
        raise ConfigurationError(
            f"refusing to listen on {host}: no API token exists, and without one anybody who "
            "can reach that address could read and operate every execution. Create one "
            "(`tether tokens create --name NAME --scope operate`) or listen on 127.0.0.1"
        )
    if mcp_mode not in _mcp.MODES:
        raise UsageError(f"unknown MCP mode {mcp_mode!r}; choose read or operate")
    flows = _flows.load(imports)
    app = create_app(client, flows, poll=poll, stream_seconds=stream_seconds, mcp_mode=mcp_mode)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
