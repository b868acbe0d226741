"""`tether schedules ...`: the schedules of scheduled flows (`@tether.flow(schedule=...)`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from .._ops import views
from .._ops.schedules import ScheduleRecord
from ._common import cli_errors, client_for, dump, out, reading, say
from .options import Command, DbOption, Group, JsonOption

schedules_app = typer.Typer(
    cls=Group,
    help=(
        "Schedules of flows defined with `@tether.flow(schedule=...)`: a worker that loaded "
        "the flow starts one execution per tick, once across the fleet. Pausing one stops "
        "its ticks on every worker; the ticks passed while paused are not fired later."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)

NameArgument = Annotated[
    str, typer.Argument(metavar="NAME", help="The schedule's name: its flow's name.")
]


def _when(schedule: ScheduleRecord, which: str) -> str:
    moment = schedule.last_tick if which == "last" else schedule.next_tick
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


@schedules_app.command("list", cls=Command)
def list_command(db: DbOption = None, as_json: JsonOption = False) -> None:
    """List the schedules: spec, paused or not, last and next tick (local time)."""
    with cli_errors(), reading(db) as client:
        schedules = client.schedules()
    if as_json:
        dump([views.schedule_json(s) for s in schedules])
        return
    if not schedules:
        say(
            "No schedules yet: a schedule appears once a worker that loaded its flow "
            "(`@tether.flow(schedule=...)`) has run against this store."
        )
        return
    table = Table(box=None, pad_edge=False)
    for column in ("name", "spec", "state", "last tick", "next tick"):
        table.add_column(column)
    for s in schedules:
        table.add_row(
            Text(s.name),
            Text(s.spec),
            "paused" if s.paused else "active",
            _when(s, "last"),
            "" if s.paused else _when(s, "next"),
        )
    out.print(table)


@schedules_app.command("pause", cls=Command)
def pause_command(name: NameArgument, db: DbOption = None) -> None:
    """Pause a schedule on every worker: its ticks pass without starting executions."""
    with cli_errors():
        client_for(db).pause_schedule(name)
    say(f"Paused schedule {name!r}.")


@schedules_app.command("resume", cls=Command)
def resume_command(name: NameArgument, db: DbOption = None) -> None:
    """Resume a paused schedule: its next tick starts an execution again."""
    with cli_errors():
        schedule = client_for(db).resume_schedule(name)
    say(f"Resumed schedule {name!r}; next tick {_when(schedule, 'next')}.")
