"""Typer option types shared by the `tether` command's sub-apps."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="TETHER_DB",
        metavar="URL",
        help="Store URL. Default: $TETHER_DB, else the .tether/tether.db of this directory "
        "or its nearest parent that has a .tether/ (as git finds .git). `tether --debug` "
        "says which store a command used.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ImportOption = Annotated[
    list[str] | None,
    typer.Option(
        "--import",
        metavar="MODULE",
        help="Load this module's flows first (repeatable), e.g. myapp.agents. tether runs "
        "only flows this process loaded (--import, --script, $TETHER_IMPORTS or "
        "[tool.tether] imports in pyproject.toml), never a module an execution's row names.",
    ),
]
ScriptOption = Annotated[
    str | None,
    typer.Option(
        "--script",
        metavar="PATH",
        help='Load the flows of this script (its `if __name__ == "__main__":` block does '
        "not run), for executions started by `python PATH`.",
    ),
]

# Every number an option takes is bounded (Click prints the range in its usage error, exit 2):
# unbounded, a huge one reached the store and came back as "unexpected OverflowError".
MAX_COUNT = 1_000_000  # --limit: rows one command lists
MAX_VERSION = 2**63 - 1  # memory versions: the store's integer range
MAX_CONCURRENCY = 10_000  # the default max_async: more would only wait for a slot
MAX_POLL_SECONDS = 3600.0
MAX_GRACE_SECONDS = 86_400.0
MAX_AGE_SECONDS = 100 * 365 * 86_400  # prune --older-than: a century, 5200w


def finite(value: float | None) -> float | None:
    """Callback of a float option: Click's range lets NaN through (it compares false)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a number of seconds")
    return value


def queue_names(names: list[str] | None) -> list[str]:
    """Callback of a repeatable --queue option: a blank name would select no queue at all.
    Returns a list even for no --queue: Typer 0.18 measures what a callback returns with
    len(), and None has none (newer Typer hands None on)."""
    for name in names or ():
        if not name.strip():
            raise typer.BadParameter("a queue name is a non-empty string")
    return list(names or ())


def _no_type(ctx: Any) -> None:
    return None


def _plain_params(params: list[Any]) -> list[Any]:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # Typer shows a flag's metavar in place of `<bool>`
        elif param.param_type_name == "argument" and hasattr(param, "display_type_rich"):
            # Recent Typer shows an argument's name (its metavar, e.g. ID) and then its type
            # (`<str>`) beside it: the name already says what to give.
            param.display_type_rich = _no_type
    return params


# Contexts and parameters are typed Any: recent Typer vendors its own Click (`typer._click`),
# older Typer uses Click itself; both have the attributes used here.
class Command(TyperCommand):
    """Every `tether` command's class: plain usage lines (`[OPTIONS] ID [PREFIX]`, not
    Typer's `{ID}`), no `<bool>` type beside flags such as `--json` and `--help`, and no
    `<str>` beside an argument's name. Options name what they take with a metavar (ID, NAME,
    N, JSON...), never Typer's type names (tests/test_cli.py checks every command)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or (param.name or "").upper()
                name += "..." if param.nargs != 1 else ""
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_params(super().get_params(ctx))


class Group(TyperGroup):
    """The class of `tether` and its sub-apps: no `<bool>` beside `--debug` and `--help`."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_params(super().get_params(ctx))
