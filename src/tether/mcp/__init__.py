"""`tether mcp`: an MCP server over stdio, so that a coding assistant (or any MCP client) can
see what agents did and, in `operate` mode, answer their waits and operate them.

A thin layer over `tether.Client`, built on the official `mcp` SDK (`pip install -e
'.[mcp]'`). Tool results are JSON data in the shapes of `--json` and the HTTP API
(`_ops.views`): stored values are shown as data, never restored, unpickled or imported.
In `read` mode no tool that changes anything is offered. The server runs no execution
itself: what resume, retry and replay start is left queued for a `tether worker` (a stdio
server lives only as long as the assistant's session).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from .._core import config as _config
from .._core import imports as _imports
from ..errors import ConfigurationError, UsageError

if TYPE_CHECKING:
    from .._ops.client import Client

Mode = Literal["read", "operate"]
MODES: tuple[Mode, ...] = ("read", "operate")


def serve(client: Client, mode: Mode = "read", imports: Sequence[str] = ()) -> None:
    """Serve `client`'s store over MCP on stdin/stdout until the client closes the stream.

    `imports`: modules to import first, so that the classes they define or
    `tether.register` (stored results, wait schemas) are restored as themselves and input is
    validated with them. No flow runs here: the process is a client only."""
    if mode not in MODES:
        raise UsageError(f"unknown MCP mode {mode!r}; choose read or operate")
    # stdout is the protocol's channel: what a module prints on import goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        for module in imports:
            try:
                with _imports.loading(f"the module {module}", module):
                    importlib.import_module(module)
            except ImportError as exc:
                raise UsageError(f"--import {module}: {exc}") from exc
    # A stdio server lives as long as the assistant's session: what it resumes, retries or
    # replays is left queued for the workers rather than run in it and cut off with it.
    _config.configure(executor=False)
    try:
        from ._server import build_server
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] not in ("mcp", "mcp_types"):
            raise
        raise ConfigurationError(
            "the MCP server needs the mcp package: pip install -e '.[mcp]' "
            "(from a clone of tether), or pip install 'mcp>=2'"
        ) from None
    build_server(client, mode).run("stdio")


__all__ = ["MODES", "Mode", "serve"]
