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
        help="Store URL (default sqlite:///.tether/tether.db, or $TETHER_DB).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
