"""`tether server`: the HTTP API (`tether.server`, extra `server`)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import ConfigurationError
from ._common import cli_errors
from .options import DbOption


def server_command(
    host: Annotated[
        str,
        typer.Option(
            metavar="HOST",
            help="Address to listen on. Anything but loopback needs an API token to exist "
            "(`tether tokens create`).",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, metavar="PORT")] = 8787,
    db: DbOption = None,
    imports: Annotated[
        list[str] | None,
        typer.Option(
            "--import",
            metavar="MODULE",
            help="Module whose flows may be started over HTTP (repeatable), e.g. myapp.flows.",
        ),
    ] = None,
    mcp_mode: Annotated[
        str,
        typer.Option(
            "--mcp-mode",
            metavar="read|operate",
            help="The MCP tools (at /mcp) of a client without a token, which only a loopback "
            "client of a server with no token is. With tokens, a token's scope decides.",
        ),
    ] = "read",
) -> None:
    """Serve the HTTP API (`/api/v1`, OpenAPI at `/api/v1/openapi.json`), the dashboard
    (`/`) and MCP over streamable HTTP (`/mcp`) until Ctrl-C.

    The server reads and records; `tether worker` processes run the executions it starts,
    resumes or gives input to.
    """
    with cli_errors():
        try:
            from ..server import serve
        except ImportError as exc:
            raise ConfigurationError(
                f"tether server needs the `server` extra ({exc.name or exc} is missing): "
                "pip install -e '.[server]' in a clone of tether"
            ) from None
        serve(host=host, port=port, db=db, imports=imports or (), mcp_mode=mcp_mode)
