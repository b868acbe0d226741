"""The `tether` command: a thin layer over `tether.Client` and `tether.Worker`.

Exit codes: 0 success, 1 the operation failed (unknown id, invalid input...), 2 a usage
error (bad arguments). Errors are printed in plain words; `--debug` shows tracebacks.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from . import _config
from ._records import WaitRecord
from .client import Client
from .errors import ConfigurationError, TetherError, UsageError

app = typer.Typer(
    name="tether",
    help="Durable execution for Python AI agents: run workers, inspect and operate executions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
executions_app = typer.Typer(
    help="Inspect and operate executions.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)
app.add_typer(executions_app, name="executions")

out = Console()
err = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", envvar="TETHER_DB", help="Store URL (default sqlite:///.tether/tether.db)."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class _State:
    debug = False


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _State.debug = debug


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn tether errors into plain messages and exit codes (2 for usage, 1 otherwise)."""
    try:
        yield
    except typer.Exit:
        raise
    except (UsageError, ConfigurationError) as exc:
        if _State.debug:
            raise
        _fail(str(exc), 2)
    except TetherError as exc:
        if _State.debug:
            raise
        _fail(str(exc), 1)


def _client(db: str | None) -> Client:
    if db:
        _config.configure(db=db)
    return Client(db)


def _dump(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def _wait_json(w: WaitRecord) -> dict[str, Any]:
    return {
        "execution_id": w.execution_id,
        "flow": w.flow,
        "name": w.name,
        "kind": w.kind,
        "status": w.status,
        "question": w.question,
        "json_schema": w.json_schema,
        "metadata": w.metadata,
        "deadline": w.deadline.isoformat() if w.deadline else None,
        "since": w.created_at.isoformat(),
        "resolved_by": w.resolved_by,
        "value": json.loads(w.value_json) if w.value_json else None,
    }


@executions_app.command("waits")
def waits_command(
    db: DbOption = None,
    flow: Annotated[str | None, typer.Option(help="Only waits of this flow.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """List the waits that need input, oldest first."""
    with _errors():
        pending = _client(db).pending_waits(flow=flow, limit=limit)
    if as_json:
        _dump([_wait_json(w) for w in pending])
        return
    if not pending:
        out.print("No pending waits.")
        return
    table = Table("execution", "flow", "wait", "question", "expects", "deadline", "since")
    for w in pending:
        expects = json.dumps(w.json_schema) if w.json_schema else "any JSON"
        table.add_row(
            w.execution_id,
            w.flow or "",
            w.name,
            _preview(w.question),
            _preview(expects),
            w.deadline.strftime("%Y-%m-%d %H:%M:%S") if w.deadline else "",
            w.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)


@executions_app.command("input")
def input_command(
    execution_id: Annotated[str, typer.Argument(help="The execution that waits.")],
    value: Annotated[str, typer.Option("--value", help="The input, as JSON (e.g. true).")],
    wait: Annotated[
        str | None,
        typer.Option("--wait", help="Which wait; found by itself when only one is pending."),
    ] = None,
    by: Annotated[str | None, typer.Option(help="Who gives the input (recorded).")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give a waiting execution its input; a live executor or worker resumes it."""
    with _errors():
        record = _client(db).input_json(execution_id, wait, value, by=by or _who())
    if as_json:
        _dump(_wait_json(record))
    else:
        out.print(f"Input recorded for wait [bold]{record.name}[/] of {record.execution_id}.")


@app.command("worker")
def worker_command(
    db: DbOption = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Executions run at once by this worker.")
    ] = 8,
    imports: Annotated[
        list[str] | None,
        typer.Option("--import", help="Module to import first (repeatable), e.g. myapp.flows."),
    ] = None,
    poll: Annotated[
        float, typer.Option(min=0.001, help="Seconds between looks for runnable work.")
    ] = 0.02,
    grace: Annotated[
        float, typer.Option(help="On SIGTERM, seconds to wait for executions to hand back.")
    ] = 30.0,
) -> None:
    """Run executions from the store until SIGTERM.

    A worker runs queued executions, waits whose input arrived, due timers, and executions
    whose process died. On SIGTERM it stops taking work and hands back what it holds at the
    next checkpoint boundary.
    """
    from ._worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Flows are imported by their recorded paths; the working directory is importable,
    # as it would be for `python -m`.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    with _errors():
        if db:
            _config.configure(db=db)
        Worker(db, concurrency=concurrency, poll=poll, imports=imports or ()).run(grace=grace)


def _preview(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _who() -> str:
    return os.environ.get("USER") or os.environ.get("USERNAME") or "cli"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tether` command; returns the exit code."""
    try:
        app(args=argv, prog_name="tether", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
