"""Typer option types shared by the `tether` command's sub-apps."""

from __future__ import annotations

from typing import Annotated

import typer

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
