"""`tether tokens ...`: the API tokens of `tether server`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from .._core import config as _config
from .._ops import views
from .._ops.client import Client
from . import render
from ._common import cli_errors, client_for, dump, err, out, reading, say
from .options import Command, DbOption, Group, JsonOption

tokens_app = typer.Typer(
    cls=Group,
    help=(
        "API tokens for `tether server` (`Authorization: Bearer ...`). Scopes: *read* (look), "
        "*operate* (also give input, start, cancel, resume, retry, replay, write memory), "
        "*admin* (everything). Only a hash is stored: a token is shown once."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)


@tokens_app.command("create", cls=Command)
def create_command(
    name: Annotated[
        str,
        typer.Option("--name", metavar="NAME", help="Who or what uses it (recorded with input)."),
    ],
    scope: Annotated[
        str, typer.Option("--scope", metavar="SCOPE", help="read, operate or admin.")
    ] = "read",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a token and print it (once: it cannot be shown again)."""
    with cli_errors():
        if db:
            _config.configure(db=db)
        # Like `memory set`, this may be the first thing done with a new database.
        secret = Client(db).create_token(name, scope)
    if as_json:
        dump({"name": name, "scope": scope, "token": secret})
        return
    say(secret)
    err.print(
        f"token {name!r} ({scope}): store it now, it is not shown again",
        style="dim",
        highlight=False,
        markup=False,
    )


@tokens_app.command("list", cls=Command)
def list_command(db: DbOption = None, as_json: JsonOption = False) -> None:
    """List the tokens (names, scopes, when created or revoked; never the secrets)."""
    with cli_errors(), reading(db) as client:
        tokens = client.tokens()
    if as_json:
        dump([views.token_json(t) for t in tokens])
        return
    if not tokens:
        say("No tokens yet: `tether tokens create --name NAME --scope read|operate|admin`.")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("name", "scope", "created", "revoked"):
        table.add_column(column)
    for t in tokens:
        revoked = render.short_when(t.revoked_at) if t.revoked_at else ""
        table.add_row(Text(t.name), t.scope, render.short_when(t.created_at), revoked)
    out.print(table)


@tokens_app.command("revoke", cls=Command)
def revoke_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The token's name.")],
    db: DbOption = None,
) -> None:
    """Revoke a token: requests that carry it are refused from now on."""
    with cli_errors():
        client_for(db).revoke_token(name)
    say(f"Revoked token {name!r}.")
