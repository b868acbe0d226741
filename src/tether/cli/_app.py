"""The `tether` command: a thin layer over `tether.Client` and `tether.Worker`.

Exit codes: 0 success, 1 the operation failed (unknown id, invalid state, a failed
execution with `--wait`...), 2 a usage error (bad arguments). Errors are printed in plain
words; `tether --debug ...` shows tracebacks. Every command takes `--json` (output for
scripts: records as plain dicts, ISO timestamps) and `--db URL` (or `TETHER_DB`).

What is printed, and how records become JSON, lives in `render`; the
plumbing the sub-apps share, in `_common`.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from ._common import State, out
from .executions import executions_app
from .mcp_server import mcp_command
from .memory import memory_app
from .options import Command, Group
from .worker import worker_command

app = typer.Typer(
    cls=Group,
    name="tether",
    help="Durable execution for Python AI agents: run workers, inspect and operate executions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
app.add_typer(executions_app, name="executions")
app.add_typer(memory_app, name="memory")

app.command("worker", cls=Command)(worker_command)
app.command("mcp", cls=Command)(mcp_command)


def _print_version(given: bool) -> None:
    if given:
        from .. import __version__

        out.print(f"tether {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    State.debug = debug
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out.width = 120  # piped output is not cut at Rich's default of 80 columns
    # Flows (and the classes of stored values) are imported by their recorded paths; the
    # working directory is importable, as it would be for `python -m`.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tether` command; returns the exit code."""
    try:
        app(args=argv, prog_name="tether", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
