"""`tether memory ...`: read and write durable memory (`tether.memory`) from a shell.

A thin layer over `tether.memory`; the plumbing (error messages and exit codes, `--db`,
printing) is `_common`'s, shared with the other sub-apps; `_app` registers this one.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from .._core import config as _config
from .._core.positions import display
from .._memory import api as memory
from .._memory.api import MemoryVersion
from .._memory.views import memory_json
from .._ops.client import Client
from ..errors import ExecutionNotFound, MemoryKeyError, MemoryScopeError
from . import render
from ._common import (
    NOT_FOUND,
    cli_errors,
    client_for,
    dump,
    fail,
    json_value,
    out,
    reading,
    say,
    value_text,
)
from .options import MAX_COUNT, MAX_VERSION, Command, DbOption, Group, JsonOption

memory_app = typer.Typer(
    cls=Group,
    help=(
        "Read and write durable memory (`tether.memory`): versioned values kept per "
        "*execution*, per *flow* (shared by all its executions) or per *namespace* (a user, a "
        "conversation...). Every write is a new version; `delete` writes a tombstone."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)


KeyArgument = Annotated[
    str, typer.Argument(metavar="KEY", help="The memory key.", show_default=False)
]
ScopeOption = Annotated[
    str | None,
    typer.Option(
        "--scope",
        metavar="SCOPE",
        help="execution, flow or namespace; implied by --execution, --flow or --namespace "
        "(`--scope namespace` alone means the namespace `default`).",
        show_default=False,
    ),
]
NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace", "-n", metavar="NAME", help="A namespace's memory (scope namespace)."
    ),
]
FlowOption = Annotated[
    str | None,
    typer.Option(
        "--flow", metavar="NAME", help="A flow's shared memory, by the flow's name (scope flow)."
    ),
]
ExecutionOption = Annotated[
    str | None,
    typer.Option(
        "--execution", "-e", metavar="ID", help="One execution's memory (scope execution)."
    ),
]

_NO_SCOPE = (
    "say whose memory: --namespace NAME (or --scope namespace for the namespace 'default'), "
    "--flow NAME or --execution ID"
)


def _scope(
    scope: str | None, namespace: str | None, flow: str | None, execution: str | None
) -> dict[str, Any]:
    if scope is None and namespace is None and flow is None and execution is None:
        raise MemoryScopeError(_NO_SCOPE)
    if execution is not None:
        # A unique prefix names an execution, as in `tether executions`; an id that names
        # none is taken as given: its execution may be pruned and its memory kept.
        with contextlib.suppress(ExecutionNotFound):
            execution = Client().resolve_id(execution)
    return {"scope": scope, "namespace": namespace, "flow": flow, "execution_id": execution}


def _open(db: str | None, *, create: bool = False) -> None:
    """Point tether.memory at the store; unless `create`, refuse one that does not exist."""
    if create:
        if db:
            _config.configure(db=db)
        _config.store_for()
    else:
        client_for(db)


def _written_by(version: MemoryVersion) -> Text:
    if version.execution_id is None:
        return Text("-", style="dim")
    where = "" if version.position is None else f" @{display(version.position)}"
    return Text(f"{version.execution_id}{where}")


def _size(version: MemoryVersion) -> str:
    if version.deleted:
        return ""
    items = f", {version.length} items" if version.length is not None else ""
    return f"{version.size:,} B{items}"


def _where(version: MemoryVersion) -> str:
    return f"{version.scope} {version.scope_id!r}"


# --- commands ---------------------------------------------------------------------------------


@memory_app.command("list", cls=Command)
def list_command(
    prefix: Annotated[
        str | None,
        typer.Argument(metavar="PREFIX", help="Only keys that start with this."),
    ] = None,
    scope: ScopeOption = None,
    namespace: NamespaceOption = None,
    flow: FlowOption = None,
    execution: ExecutionOption = None,
    limit: Annotated[
        int, typer.Option(min=1, max=MAX_COUNT, metavar="N", help="Show at most this many.")
    ] = 1000,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the keys that exist (not deleted), with their latest version, when it was
    written and its size. Without --scope, --namespace, --flow or --execution: the keys
    of every scope.

    Example: `tether memory list user: --namespace acme`
    """
    with cli_errors(), reading(db):
        if scope is None and namespace is None and flow is None and execution is None:
            rows = _config.store_for().list_memory(
                scope=None, scope_id=None, prefix=prefix, limit=limit
            )
            entries = [memory._version(_config.store_for(), row, None) for row in rows]
        else:
            entries = memory.entries(
                prefix, **_scope(scope, namespace, flow, execution), limit=limit
            )
    if as_json:
        dump([memory_json(e) for e in entries])
        return
    if not entries:
        say("No memory keys match." if prefix else "No memory keys yet.")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("scope", "id", "key", "version", "written", "size"):
        table.add_column(column, no_wrap=column != "key")
    for e in entries:
        table.add_row(
            Text(e.scope),
            render.one_line(e.scope_id),
            Text(e.key),
            str(e.version),
            render.short_when(e.created_at),
            _size(e),
        )
    out.print(table)


@memory_app.command("get", cls=Command)
def get_command(
    key: KeyArgument,
    version: Annotated[
        int | None,
        typer.Option(
            "--version",
            "-v",
            min=1,
            max=MAX_VERSION,
            metavar="N",
            help="This version, not the latest.",
        ),
    ] = None,
    scope: ScopeOption = None,
    namespace: NamespaceOption = None,
    flow: FlowOption = None,
    execution: ExecutionOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print the value of a key (its latest version, or --version N) as JSON; a string is
    printed as it is. Exit 3 when the key does not exist or was deleted.

    `--json` prints the version's details with the value.
    """
    with cli_errors(), reading(db):
        where = _scope(scope, namespace, flow, execution)
        found = memory._find(key, version=version, **where)
        if found is None or found.deleted:
            scope_name, scope_id = memory._scope(
                scope, namespace, flow, where["execution_id"], None
            )
            place = f"{scope_name} {scope_id!r}"
            if version is None:
                gone = " (it was deleted; `tether memory history` shows it)" if found else ""
                raise MemoryKeyError(f"no memory key {key!r} in {place}{gone}")
            if found is None:
                raise MemoryKeyError(
                    f"memory key {key!r} has no version {version} in {place}; "
                    f"`tether memory history {key}` lists its versions"
                )
            raise MemoryKeyError(f"version {version} of {key!r} in {place} is its deletion")
        shown = memory_json(found, with_value=True)
        value = shown["value"]
    if as_json:
        dump(shown)
    elif isinstance(value, str):
        say(value)
    else:
        dump(value)


@memory_app.command("set", cls=Command)
def set_command(
    key: KeyArgument,
    value: Annotated[
        str | None,
        typer.Option(
            "--value",
            metavar="JSON",
            help="The value, as JSON (a string needs JSON quotes: '\"hello\"'); `-` reads it "
            "from stdin, `@FILE` from a file (a string starting with @ in JSON quotes: "
            "'\"@ada\"'). Without it, the JSON is read from stdin.",
            show_default=False,
        ),
    ] = None,
    if_version: Annotated[
        int | None,
        typer.Option(
            "--if-version",
            metavar="N",
            min=0,
            max=MAX_VERSION,
            help="Store it only if the key's latest version is N (0: only if the key is new); "
            "exit 1 if someone wrote it since.",
        ),
    ] = None,
    scope: ScopeOption = None,
    namespace: NamespaceOption = None,
    flow: FlowOption = None,
    execution: ExecutionOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Store a JSON value as the next version of a key (creating the database if needed).

    Example: `tether memory set theme --namespace alice --value '{"dark": true}'`, or
    `tether memory set notes --namespace alice --value @notes.json`
    """
    unchanged = "Nothing was stored."
    text = value_text(value, option="--value", unchanged=unchanged)
    parsed = json_value(text, option="--value", unchanged=unchanged, given=value or "-")
    with cli_errors():
        where = _scope(scope, namespace, flow, execution)
        _open(db, create=True)
        written = memory.set(key, parsed, **where, if_version=if_version)
        found = memory._find(key, version=written, **where)
    assert found is not None
    if as_json:
        dump(memory_json(found))
    else:
        say(f"Stored version {written} of {key!r} ({_where(found)}).")


@memory_app.command("history", cls=Command)
def history_command(
    key: KeyArgument,
    values: Annotated[
        bool, typer.Option("--values", help="Show each version's value (a preview in the table).")
    ] = False,
    scope: ScopeOption = None,
    namespace: NamespaceOption = None,
    flow: FlowOption = None,
    execution: ExecutionOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List every version of a key, oldest first, deletions included: when it was written,
    its size, and the execution and position that wrote it (when a flow did)."""
    with cli_errors(), reading(db):
        versions = memory.history(key, **_scope(scope, namespace, flow, execution))
        shown = [memory_json(v, with_value=values) for v in versions]
    if as_json:
        dump(shown)
        return
    if not versions:
        fail(f"memory key {key!r} has no versions here", NOT_FOUND)
    table = Table(box=None, pad_edge=False)
    for column in ("version", "written", "size", "by"):
        table.add_column(column, no_wrap=True)
    if values:
        table.add_column("value")
    for v, data in zip(versions, shown, strict=True):
        cells: list[Any] = [
            str(v.version),
            render.short_when(v.created_at),
            Text("deleted", style="magenta") if v.deleted else _size(v),
            _written_by(v),
        ]
        if values:
            cells.append(render.one_line("" if v.deleted else render.preview(data["value"], 80)))
        table.add_row(*cells)
    out.print(table)


@memory_app.command("delete", cls=Command)
def delete_command(
    key: KeyArgument,
    scope: ScopeOption = None,
    namespace: NamespaceOption = None,
    flow: FlowOption = None,
    execution: ExecutionOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a key: a tombstone version is written, so `history` still shows every value
    it had. Exit 3 when the key does not exist (or is deleted already)."""
    with cli_errors():
        _open(db)
        where = _scope(scope, namespace, flow, execution)
        written = memory.delete(key, **where)
        found = memory._find(key, version=written, **where)
    assert found is not None
    if as_json:
        dump(memory_json(found))
    else:
        say(f"Deleted {key!r} ({_where(found)}): version {written} is its tombstone.")
