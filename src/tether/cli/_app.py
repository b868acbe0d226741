"""The `tether` command: a thin layer over `tether.Client` and `tether.Worker`.

Exit codes (`_common.EXIT_CODES`, also in `tether --help`): 0 success, 1 the operation
failed or was refused, 2 a usage error, 3 not found, 4 the store failed, 130 interrupted
(143 on SIGTERM).
Errors are printed in plain words; `tether --debug ...` shows tracebacks. Every command
takes `--json` (output for scripts: records as plain dicts, ISO timestamps) and `--db URL`
(or `TETHER_DB`).

What is printed, and how records become JSON, lives in `render`; the
plumbing the sub-apps share, in `_common`.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from .._core import config as _config
from ..errors import ConfigurationError
from ._common import EXIT_CODES, FAILED, USAGE, State, debug_traceback, err, out
from .executions import executions_app
from .launcher import launcher_command
from .mcp_server import mcp_command
from .memory import memory_app
from .options import Command, Group
from .replay_test import replay_test_command
from .schedules import schedules_app
from .server import server_command
from .tokens import tokens_app
from .worker import worker_command

app = typer.Typer(
    cls=Group,
    name="tether",
    help="Durable execution for Python AI agents: run workers, inspect and operate executions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    epilog=EXIT_CODES,
)
app.add_typer(executions_app, name="executions")
app.add_typer(memory_app, name="memory")
app.add_typer(schedules_app, name="schedules")
app.add_typer(tokens_app, name="tokens")

app.command("worker", cls=Command)(worker_command)
app.command("launcher", cls=Command)(launcher_command)
app.command("server", cls=Command)(server_command)
app.command("mcp", cls=Command)(mcp_command)
app.command("replay-test", cls=Command)(replay_test_command)


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
    if State.owned:
        try:
            _config.apply_gc(owned=True)
        except ConfigurationError as exc:
            err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(USAGE) from None
    if not out.is_terminal:
        # Piped output is not cut at Rich's default of 80 columns; $COLUMNS still rules, read
        # at each command (a process that runs several, as tests do, may change it).
        columns = os.environ.get("COLUMNS", "")
        out.width = int(columns) if columns.isdigit() and int(columns) > 0 else 120
    # Modules named by --import or $TETHER_IMPORTS resolve from the working directory too,
    # as they would for `python -m`. (What a stored row names is never imported.)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tether` command; returns the exit code."""
    # The command's own process, not a caller's (tests drive `app` itself): tether sets the
    # collector's thresholds, as TETHER_GC_THRESHOLD says or its own default (in `_main`,
    # after `--version` and `--help` had their say: a bad setting does not hide them).
    State.owned = True
    try:
        app(args=argv, prog_name="tether", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:
        # Only `--debug` lets an error through (else cli_errors prints it plainly): print the
        # traceback it asked for, redacted, instead of Python's own.
        sys.stderr.write(debug_traceback(exc))
        return FAILED  # as Python exits on an uncaught error
    return 0


if __name__ == "__main__":
    sys.exit(main())
