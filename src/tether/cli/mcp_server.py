"""`tether mcp`: serve the store to an MCP client over stdio, over `tether.mcp`."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import cli_errors, client_for, reading
from .options import DbOption


def mcp_command(
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            metavar="MODE",
            help="read: tools that only read (executions, logs, waits, memory). operate: "
            "also give input, cancel, resume, retry and replay.",
        ),
    ] = "read",
    imports: Annotated[
        list[str] | None,
        typer.Option(
            "--import",
            metavar="MODULE",
            help="Module to import first, so that the classes of wait schemas it defines "
            "are known when input is checked (repeatable).",
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Serve executions to an assistant over MCP (Model Context Protocol), on stdin/stdout.

    Add it to an MCP client as the command `tether mcp --mode operate`. It runs no
    execution itself: what it resumes, retries or replays is queued for a `tether worker`.
    Needs `pip install -e '.[mcp]'`.
    """
    from .. import mcp

    if mode not in mcp.MODES:
        raise typer.BadParameter(f"choose read or operate, not {mode!r}", param_hint="'--mode'")
    with cli_errors():
        if mode == "operate":
            mcp.serve(client_for(db), "operate", imports or ())
            return
        # Its tools only read: the store is opened read-only, as the reading commands do.
        with reading(db) as client:
            mcp.serve(client, "read", imports or ())
