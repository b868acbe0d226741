"""`tether executions ...`: inspect and operate executions, over `tether.Client`."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.text import Text

from .._core.config import settings
from .._core.status import Status
from .._ops import views
from .._ops.client import Client, Skipped
from .._runtime.executor import executor
from .._runtime.records import ExecutionRecord
from ..errors import ResultTimeout, TetherError
from ..store import redact
from . import render
from ._common import (
    cli_errors,
    client_for,
    dump,
    err,
    fail,
    json_line,
    json_value,
    load_named,
    out,
    reading,
    running_here,
    say,
    value_text,
    who,
)
from .options import (
    MAX_AGE_SECONDS,
    MAX_COUNT,
    Command,
    DbOption,
    Group,
    ImportOption,
    JsonOption,
    ScriptOption,
)

executions_app = typer.Typer(
    cls=Group,
    help=(
        "Inspect and operate executions. An *execution* is one run of a `@tether.flow`; each "
        "`@tether.checkpoint` call inside it is recorded with its result, so an execution can "
        "be resumed after a crash, retried, or replayed from any step."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)
# How often `watch` and `logs --follow` look at the store, and `--wait` checks for a wait.
POLL_SECONDS = 0.25

IdArgument = Annotated[
    str,
    typer.Argument(
        metavar="ID", help="The execution id (see `tether executions list`).", show_default=False
    ),
]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="Wait for it to finish and print its result (exit 1 if it failed). Stops early "
        "if it waits for input.",
    ),
]
QueueOption = Annotated[
    bool,
    typer.Option(
        "--queue",
        help="Leave it queued for a `tether worker` instead of running it in this process "
        "(for machines that cannot import the flow's code).",
    ),
]
_STATUSES = ", ".join(s.value for s in Status)
StatusOption = Annotated[
    list[Status] | None,
    typer.Option(
        "--status",
        "-s",
        metavar="STATUS",
        help=f"Only executions with this status ({_STATUSES}); repeatable.",
    ),
]


def _with_attention(data: dict[str, Any], attention: str | None) -> dict[str, Any]:
    if attention is not None:
        data["attention"] = attention
    return data


def _then(client: Client, record: ExecutionRecord) -> str | None:
    """Who continues a waiting execution once its input or timer arrives."""
    if record.status is not Status.WAITING:
        return None
    return client.continuation(record.id).message


def _settled(record: ExecutionRecord) -> bool:
    return record.status.finished or record.status is Status.WAITING


def _settle(
    client: Client,
    execution_id: str,
    *,
    here: bool = True,
    on_wait: Callable[[ExecutionRecord], None] | None = None,
) -> ExecutionRecord:
    """Wait until the execution finishes or waits (for input or a timer). `here`: it runs in
    this process, so once it is handed back (`queued` with no holder) and not parked here (as
    for a crash loop's pause, which this process waits out), nothing here will run it on (a
    flow this process cannot import, say). `on_wait`: wait on through its waits while this
    process has it parked (it runs it on when the input or timer comes, from anywhere);
    called once per wait it reaches."""
    handle = client.handle(execution_id)
    told: set[tuple[str, ...]] = set()
    while True:
        try:
            handle.result(timeout=POLL_SECONDS)
        except ResultTimeout:
            record = client.get(execution_id)
            if record.status is Status.WAITING:
                if on_wait is None or not executor().will_run(execution_id):
                    break
                waits = tuple(w.name for w in record.pending_waits)
                if waits not in told:
                    told.add(waits)
                    on_wait(record)
                continue
            handed_back = record.status is Status.QUEUED and record.owner is None
            if here and handed_back and not executor().will_run(execution_id):
                break
            continue
        except TetherError:
            pass  # failed or cancelled: the record says which
        break
    return client.get(execution_id)


def _follow_through(
    client: Client, execution_id: str, *, wait: bool, queue: bool, as_json: bool
) -> ExecutionRecord:
    """After resume, retry or replay: the execution once it finishes or waits. It runs in this
    process (unless `--queue`), so the process stays until then, `--wait` or not."""
    if queue and not wait:
        return client.get(execution_id)
    if queue and not as_json:
        err.print("Waiting for a worker (`tether worker`) to run it…", style="dim")
    return _settle(client, execution_id, here=not queue)


def _report(record: ExecutionRecord, *, wait: bool, as_json: bool) -> None:
    """Print where a started execution got to; with `--wait`, its result (exit 1 if it
    failed or was cancelled)."""
    failed = record.status in (Status.FAILED, Status.CANCELLED)
    if as_json:
        dump(views.execution_json(record))
    elif record.status is Status.QUEUED:
        say("Queued for a worker (`tether worker`).")
    elif record.status is Status.SUCCEEDED and wait:
        result = views.as_data(record.result_json)
        if isinstance(result, str):
            say(result)
        else:
            dump(result)
    elif record.status is Status.WAITING:
        out.print(render.input_hint(record) or render.timer_hint(record))
    elif failed and wait:
        error = render.error_line(record.error) if record.status is Status.FAILED else ""
        fail(f"execution {record.id} {record.status.value}" + (f": {error}" if error else ""), 1)
    else:
        line = Text(f"Execution {record.id} ")
        line.append_text(render.status_text(record.status))
        if record.error is not None:
            line.append(f": {render.error_line(record.error)}")
        out.print(line)
    if failed and wait:
        raise typer.Exit(1)


# --- reading ----------------------------------------------------------------------------------


@executions_app.command("list", cls=Command)
def list_command(
    status: StatusOption = None,
    flow: Annotated[
        str | None, typer.Option(metavar="NAME", help="Only executions of this flow (its name).")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=MAX_COUNT, metavar="N", help="Show at most this many.")
    ] = 50,
    parent: Annotated[
        str | None,
        typer.Option(
            metavar="ID", help="Only the child flows started by this execution's flow code."
        ),
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List executions, newest first: status, when each started, how long it ran, how many
    of its checkpoint calls are done, and the input it waits for, if any.

    Example: `tether executions list --status failed --status waiting --flow research_agent`
    """
    with cli_errors(), reading(db) as client:
        if parent is not None:
            parent = client.resolve_id(parent)
        records = client.list(status=status, flow=flow, limit=limit, parent=parent)
        notes = {r.id: note for r in records if (note := client.attention(r)) is not None}
    if as_json:
        dump([_with_attention(views.execution_json(r), notes.get(r.id)) for r in records])
    elif records:
        out.print(render.executions_table(records, stranded=notes))
        if notes:
            err.print(
                f"{len(notes)} of them ran in a process that is gone: nobody runs "
                f"{'it' if len(notes) == 1 else 'them'}. A running `tether worker` takes such "
                "executions over; or run `tether executions resume ID` (`get ID` says more).",
                style="yellow",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
    elif status or flow or parent:
        say("No executions match.")
    else:
        say(f"No executions yet in {redact(client.db)}. Run a @tether.flow to record one.")


@executions_app.command("get", cls=Command)
def get_command(execution_id: IdArgument, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Show one execution: its status, timing, result or error, then every step in order:
    each checkpoint call with its status, attempts, duration and a preview of its result,
    the waits for input where they happened, and what runs right now.

    `--json` prints everything, including full results, tracebacks and events.
    """
    with cli_errors(), reading(db) as client:
        record = client.get(client.resolve_id(execution_id))
        attention = client.attention(record)
        if as_json:
            dump(_with_attention(views.execution_json(record, full=True), attention))
        else:
            out.print(render.execution_view(record, attention, _then(client, record)))


@executions_app.command("logs", cls=Command)
def logs_command(
    execution_id: IdArgument,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            "-c",
            metavar="STEP",
            help="Only this checkpoint: a name (all its calls), `name#k` (its k-th call) or "
            "a position.",
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep printing new output until the execution finishes or waits."
        ),
    ] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print what an execution's checkpoints printed (stdout, stderr) and logged (`logging`),
    in order, each line prefixed with the checkpoint's position and name. A call's output is
    recorded when the call finishes.

    With `--json`: a list of records; with `--follow --json`, one record per line.
    """
    with cli_errors(), reading(db) as client:
        execution_id = client.resolve_id(execution_id)
        if not follow:
            records = client.logs(execution_id, checkpoint=checkpoint)
            if as_json:
                dump([views.log_json(r) for r in records])
            elif records:
                for r in records:
                    out.print(render.log_line(r), highlight=False, soft_wrap=True)
            else:
                say(_no_output(execution_id, checkpoint))
            return
        handle = client.handle(execution_id)
        last, printed = 0, False
        while True:
            status = handle.status()  # before reading: output of a finished run is all in
            for r in client.logs(execution_id, checkpoint=checkpoint, after=last):
                if as_json:
                    json_line(views.log_json(r))
                else:
                    out.print(render.log_line(r), highlight=False, soft_wrap=True)
                last, printed = r.id, True
            if status.finished or status is Status.WAITING:
                break
            time.sleep(POLL_SECONDS)
        if not printed and not as_json:
            say(_no_output(execution_id, checkpoint))


def _no_output(execution_id: str, checkpoint: str | None) -> str:
    where = f"checkpoint {checkpoint!r} of execution" if checkpoint else "execution"
    return f"No output recorded for {where} {execution_id}."


@executions_app.command("watch", cls=Command)
def watch_command(
    execution_id: IdArgument, db: DbOption = None, as_json: JsonOption = False
) -> None:
    """Follow an execution live: its steps so far and what runs now, refreshed 4 times a
    second until it finishes or waits for input; then its final state, as `get` shows it.

    Exits 0 when it succeeded or waits, 1 when it failed or was cancelled. With `--json`
    (or when the output is not a terminal) it prints one line per change instead: JSON
    objects with `--json`, short text lines otherwise.
    """
    with cli_errors(), reading(db) as client:
        record = client.get(client.resolve_id(execution_id))
        if as_json or not out.is_terminal:
            record = _watch_lines(client, record, as_json)
        else:
            view = render.live_view(record, client.attention(record))
            with Live(view, console=out, refresh_per_second=4, transient=True) as live:
                while not _settled(record):
                    time.sleep(POLL_SECONDS)
                    record = client.get(record.id)
                    live.update(render.live_view(record, client.attention(record)))
        if not as_json:
            out.print(render.execution_view(record, None, _then(client, record)))
    if record.status in (Status.FAILED, Status.CANCELLED):
        raise typer.Exit(1)


def _watch_lines(client: Client, record: ExecutionRecord, as_json: bool) -> ExecutionRecord:
    seen: tuple[Any, ...] | None = None
    while True:
        attention = client.attention(record)
        key = (render.watch_key(record), attention is None)
        if key != seen:
            if as_json:
                state = _with_attention(views.watch_state(record), attention)
                then = _then(client, record)
                if then is not None:
                    state["continues"] = then
                json_line(state)
            else:
                out.print(render.watch_line(record, attention), highlight=False, soft_wrap=True)
            seen = key
        if _settled(record):
            return record
        time.sleep(POLL_SECONDS)
        record = client.get(record.id)


# --- operating --------------------------------------------------------------------------------


@executions_app.command("resume", cls=Command)
def resume_command(
    execution_id: IdArgument,
    wait: WaitOption = False,
    queue: QueueOption = False,
    imports: ImportOption = None,
    script: ScriptOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Continue an unfinished execution (its process died, or nobody runs it): the flow runs
    again from the top in this process, recorded checkpoints return their recorded results,
    and the rest runs live. This process stays until it finishes or waits for input.

    Its flow must be loaded here: `--import MODULE` or `--script PATH` (or $TETHER_IMPORTS,
    [tool.tether] imports); the module or script its row names is never imported, and the
    error names the flag that loads it (exit 2). Refused (exit 1) while a live process still
    runs it, or when it already finished.
    """
    with cli_errors(), running_here(queue, as_json):
        client = client_for(db)
        load_named(imports, script)
        handle = client.resume(client.resolve_id(execution_id))
        if not as_json:
            say(f"Resumed execution {handle.id}.")
        record = _follow_through(client, handle.id, wait=wait, queue=queue, as_json=as_json)
    _report(record, wait=wait, as_json=as_json)


@executions_app.command("retry", cls=Command)
def retry_command(
    execution_id: IdArgument,
    wait: WaitOption = False,
    queue: QueueOption = False,
    imports: ImportOption = None,
    script: ScriptOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a failed execution again under the same id, with the current code: recorded
    results are reused, and the checkpoint that failed and everything after it run again.

    Only failed executions can be retried; `replay` makes a new execution from any other.
    """
    with cli_errors(), running_here(queue, as_json):
        client = client_for(db)
        load_named(imports, script)
        handle = client.retry(client.resolve_id(execution_id))
        if not as_json:
            say(f"Retrying execution {handle.id}.")
        record = _follow_through(client, handle.id, wait=wait, queue=queue, as_json=as_json)
    _report(record, wait=wait, as_json=as_json)


@executions_app.command("replay", cls=Command)
def replay_command(
    execution_id: IdArgument,
    from_: Annotated[
        str,
        typer.Option(
            "--from",
            metavar="STEP",
            help="Where the new execution starts running live: a checkpoint name (its first "
            "call), `name#k` (its k-th call) or a position as `get` shows it (`3`, `1.0`, "
            "`[key].0`), or a wait or sleep (by name, position, or as `get` shows it: "
            "`wait approve`, `sleep`, `sleep#2`; it waits again). Calls before it reuse "
            "their recorded results.",
            show_default=False,
        ),
    ],
    override: Annotated[
        list[str] | None,
        typer.Option(
            "--override",
            "-o",
            metavar="NAME=JSON",
            help="Use this value as the recorded result of checkpoint NAME (a call before "
            "--from), e.g. `draft='\"an edited draft\"'`. Repeatable.",
        ),
    ] = None,
    args: Annotated[
        str | None,
        typer.Option(
            "--args",
            metavar="JSON",
            help="New arguments for the flow: a JSON list (positional) or object (keywords).",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait for the new execution to finish and print its result (exit 1 if it "
            "failed), through its waits: forked from a wait, it asks again, and this process "
            "runs it on once the input is given (from anywhere: `tether executions input`).",
        ),
    ] = False,
    queue: QueueOption = False,
    imports: ImportOption = None,
    script: ScriptOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fork an execution into a new one that reuses its recorded results up to a step and
    runs live from there, with the current code. The original is not changed.

    Without `--wait` this process stays until the new execution finishes or waits; a wait's
    input given after it exited is then for a `tether worker` (or `recover`) to run on.

    Example: `tether executions replay ID --from write_report --override
    draft='"an edited draft"' --wait`
    """
    overrides = _parse_overrides(override or [])
    new_args = _parse_args(args)
    with cli_errors(), running_here(queue, as_json):
        client = client_for(db)
        load_named(imports, script)
        execution_id = client.resolve_id(execution_id)
        handle = client.replay(execution_id, from_=from_, overrides=overrides, args=new_args)
        if not as_json:
            say(f"Replaying {execution_id} from {from_} as new execution {handle.id}.")
        if wait and not queue:
            record = _settle(client, handle.id, on_wait=_quiet if as_json else _waiting_here)
        else:
            record = _follow_through(client, handle.id, wait=wait, queue=queue, as_json=as_json)
    _report(record, wait=wait, as_json=as_json)
    if record.status is Status.WAITING and not queue and not as_json:
        err.print(
            "This command exits now, and nothing here runs it on: once its input is given "
            "(or its timer is due), a `tether worker` or `tether executions recover` must "
            "run it. `--wait` keeps this process for it.",
            style="yellow",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def _quiet(record: ExecutionRecord) -> None:
    """`--json`: stdout holds only the JSON; nothing to say."""


def _waiting_here(record: ExecutionRecord) -> None:
    """`replay --wait` reached a wait: say how to give the input, and that it runs here."""
    hint = render.input_hint(record) or render.timer_hint(record)
    err.print(hint)
    err.print(
        f"Waiting here: this process runs {record.id} on once that comes (Ctrl-C hands it "
        "to a worker).",
        style="dim",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(
                f"expected NAME=JSON, e.g. draft='\"an edited draft\"', not {item!r}",
                param_hint="'--override'",
            )
        try:
            overrides[name.strip()] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(
                f"the value for {name.strip()!r} is not valid JSON ({exc.msg}); expected "
                "NAME=JSON, and a string needs JSON quotes: draft='\"an edited draft\"'",
                param_hint="'--override'",
            ) from None
    return overrides


def _parse_args(text: str | None) -> list[Any] | dict[str, Any] | None:
    if text is None:
        return None
    hint = 'a JSON list (positional) or object (keywords), e.g. \'["topic"]\' or \'{"topic": "x"}\''
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(
            f"not valid JSON ({exc.msg}); expected {hint}", param_hint="'--args'"
        ) from None
    if not isinstance(value, list | dict):
        raise typer.BadParameter(f"expected {hint}, not {text!r}", param_hint="'--args'")
    return value


@executions_app.command("cancel", cls=Command)
def cancel_command(
    execution_id: IdArgument, db: DbOption = None, as_json: JsonOption = False
) -> None:
    """Cancel an execution. One that nobody runs (queued, waiting for input or a timer) is
    cancelled at once; a running one stops at its next checkpoint boundary.

    Exit 1 if it had already succeeded or failed.
    """
    with cli_errors():
        client = client_for(db)
        execution_id = client.resolve_id(execution_id)
        status = client.cancel(execution_id)
    if status in (Status.SUCCEEDED, Status.FAILED):
        fail(f"execution {execution_id} already {status.value}; there is nothing to cancel", 1)
    if as_json:
        dump({"id": execution_id, "status": status.value, "cancelled": status is Status.CANCELLED})
    elif status is Status.CANCELLED:
        say(f"Execution {execution_id} is cancelled.")
    else:
        say(
            f"Cancel requested: execution {execution_id} ({status.value}) stops at its next "
            "checkpoint boundary."
        )


@executions_app.command("recover", cls=Command)
def recover_command(
    queue: QueueOption = False,
    imports: ImportOption = None,
    script: ScriptOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Resume every execution that should be running and is not: its process died, it is
    queued with nobody on it, or its input or timer arrived. They run in this process, which
    stays until each is finished or waits on something outside it (input, a timer, a live
    process), and so do the parents they unblock: a parent that waited for a child resumed
    here runs on once the child ends. What is left unfinished is listed with why. (A
    `tether worker` does this continuously.)

    Only executions of flows this process loaded run (`--import`, `--script`,
    $TETHER_IMPORTS, [tool.tether] imports); the others are listed as skipped, with the flag
    that would load them. Exits 1 when it skipped any, or when a recovered execution then
    fails or is cancelled.
    """
    with cli_errors(), running_here(queue, as_json):
        client = client_for(db)
        load_named(imports, script)
        ids = client.recover()
        if ids and not as_json:
            where = "queued for the workers" if queue else "running them here"
            say(f"Recovered {len(ids)} execution(s), {where}.")
        records = [client.get(i) for i in ids]
    if as_json:
        dump([views.execution_json(r) for r in records])
    elif records:
        out.print(render.executions_table(records))
    elif not ids.skipped:
        say("Nothing to recover: no execution is stranded.")
    for left in ids.left:
        err.print(
            f"left {left.execution_id} ({left.status.value}): it {left.reason}",
            style="yellow",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    for line in _skip_lines(ids.skipped):
        err.print(line, style="red", highlight=False, markup=False, soft_wrap=True)
    failed = [r for r in records if r.status in (Status.FAILED, Status.CANCELLED)]
    if failed and not as_json:
        err.print(
            f"{len(failed)} recovered execution(s) did not succeed: "
            + ", ".join(f"{r.id} ({r.status.value})" for r in failed)
            + " (see `tether executions get ID`)",
            style="red",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if failed or ids.skipped:
        raise typer.Exit(1)


def _skip_lines(skipped: list[Skipped]) -> list[str]:
    """One line per reason: `skipped 2 executions: flow ... is not loaded; add --import x`."""
    by_reason: dict[str, list[Skipped]] = {}
    for item in skipped:
        by_reason.setdefault(item.reason, []).append(item)
    lines = []
    for reason, items in by_reason.items():
        count = f"{len(items)} execution" + ("s" if len(items) != 1 else "")
        shown = ", ".join(i.execution_id for i in items[:5]) + (", ..." if len(items) > 5 else "")
        lines.append(f"skipped {count} ({shown}): {reason}")
    return lines


def _stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _parse_age(text: str) -> float:
    """`30d`, `12h`, `15m`, `90s`, `2w`, or combined: `1d12h`."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _AGE.sub("", compact):
        raise typer.BadParameter(
            f"expected an age such as 30d, 12h, 15m, 90s or 2w (or combined: 1d12h), not {text!r}",
            param_hint="'--older-than'",
        )
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _AGE.findall(compact))
    if seconds > MAX_AGE_SECONDS:
        raise typer.BadParameter(
            f"{text!r} is more than a century; the most is 5200w", param_hint="'--older-than'"
        )
    return seconds


@executions_app.command("prune", cls=Command)
def prune_command(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="AGE",
            help="Only executions that finished longer ago than this: 30d, 12h, 15m, 90s, 2w.",
            show_default=False,
        ),
    ],
    status: Annotated[
        list[Status] | None,
        typer.Option(
            "--status",
            "-s",
            metavar="STATUS",
            help="Only finished executions with this status: succeeded, failed or cancelled "
            "(repeatable; default: all three).",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete finished executions, and everything recorded about them, to keep the store
    small. First prints how many match; deletes them only with `--yes` or when you confirm.

    Example: `tether executions prune --older-than 30d --status succeeded --yes`
    """
    seconds = _parse_age(older_than)
    with cli_errors():
        client = client_for(db)
        matched = client.prune(seconds, status=status, dry_run=True)
        which = " or ".join(s.value for s in status) + " " if status else ""
        summary: dict[str, Any] = {
            "older_than_seconds": seconds,
            "statuses": [s.value for s in status] if status else None,
            "matched": matched,
            "deleted": 0,
        }
        if not as_json:
            noun = "execution" if matched == 1 else "executions"
            say(f"{matched} {which}{noun} finished more than {older_than} ago.")
        if matched and not yes:
            if as_json or not _stdin_is_terminal():
                if not as_json:
                    say("Nothing deleted; run again with --yes to delete them.")
                else:
                    dump(summary)
                return
            if not typer.confirm("Delete them, with everything recorded about them?"):
                say("Nothing deleted.")
                return
        if matched:
            summary["deleted"] = client.prune(seconds, status=status)
            if not as_json:
                say(f"Deleted {summary['deleted']}.")
    if as_json:
        dump(summary)


# --- waits, input and workers -----------------------------------------------------------------


@executions_app.command("waits", cls=Command)
def waits_command(
    db: DbOption = None,
    flow: Annotated[
        str | None, typer.Option(metavar="NAME", help="Only waits of this flow.")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=MAX_COUNT, metavar="N", help="At most this many.")
    ] = 100,
    as_json: JsonOption = False,
) -> None:
    """List the waits that need input (a flow called `tether.wait(...)`), oldest first: the
    question, the JSON it expects, and its deadline. Answer one with `executions input`."""
    with cli_errors(), reading(db) as client:
        pending = client.pending_waits(flow=flow, limit=limit)
    if as_json:
        dump([views.wait_json(w) for w in pending])
    elif pending:
        for line in render.waits_view(pending, out.width):
            # Soft-wrapped: a name longer than the terminal is never cut or split by us.
            out.print(line, soft_wrap=True)
    else:
        say("No pending waits.")


@executions_app.command("send", cls=Command)
def send_command(
    execution_id: Annotated[str, typer.Argument(metavar="ID", help="The execution.")],
    wait: Annotated[
        str, typer.Argument(metavar="NAME", help="The wait's name (as the flow's tether.wait).")
    ],
    value: Annotated[
        str,
        typer.Option(
            "--value",
            metavar="JSON",
            help="The value, as JSON: true, 3, '\"a string\"', '{\"k\": 1}'; `-` reads it "
            "from stdin, `@FILE` from a file (a string starting with @ in JSON quotes: "
            "'\"@ada\"').",
            show_default=False,
        ),
    ],
    by: Annotated[str | None, typer.Option(metavar="NAME", help="Who sends it (recorded).")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send a value to a wait, whether the flow waits there now or reaches it later (a
    callback that may come before the flow asks for it). A pending wait gets it at once;
    otherwise it is kept, and validated against the wait's schema when the flow gets there
    (a value that does not match is shown as rejected by `get`). One message per wait.

    Example: `tether executions send ID paid --value '{"amount": 1200}'`.
    """
    unchanged = "Nothing was sent."
    limit = settings().max_input_bytes
    text = value_text(value, option="--value", unchanged=unchanged, limit=limit)
    json_value(text, option="--value", unchanged=unchanged, given=value)
    with cli_errors():
        client = client_for(db)
        execution_id = client.resolve_id(execution_id)
        record = client.send_json(execution_id, wait, text, by=by or who())
    if as_json:
        dump(views.message_json(record))
        return
    line = Text("Input given to wait " if record.status == "delivered" else "Sent to wait ")
    line.append(record.name, style="bold")
    line.append(f" of {record.execution_id}")
    if record.status != "delivered":
        line.append("; it is delivered when the flow reaches that wait")
    out.print(line.append("."))


@executions_app.command("input", cls=Command)
def input_command(
    execution_id: Annotated[str, typer.Argument(metavar="ID", help="The execution that waits.")],
    value: Annotated[
        str,
        typer.Option(
            "--value",
            metavar="JSON",
            help="The input, as JSON: true, 3, '\"a string\"', '{\"k\": 1}'; `-` reads it "
            "from stdin, `@FILE` from a file (a string starting with @ in JSON quotes: "
            "'\"@ada\"').",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            metavar="NAME",
            help="Which wait, by its name; found by itself when only one is pending.",
        ),
    ] = None,
    # `--wait` blocks until the execution ends on run, resume, retry and replay; here it
    # used to name the wait. Kept hidden for scripts written before `--name`.
    old_name: Annotated[str | None, typer.Option("--wait", metavar="NAME", hidden=True)] = None,
    by: Annotated[
        str | None, typer.Option(metavar="NAME", help="Who gives the input (recorded).")
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give a waiting execution its input (validated against the wait's schema); the process
    that started it, if alive, or a `tether worker` then continues it.

    Example: `tether executions input ID --value true`, or for a large answer
    `tether executions input ID --value @answer.json` (`--value -` reads stdin).
    """
    unchanged = "No input was recorded."
    if old_name is not None:
        if name is not None and name != old_name:
            raise typer.BadParameter(
                f"--wait {old_name!r} and --name {name!r} name different waits; give --name "
                "only (--wait NAME is its old spelling)",
                param_hint="--name",
            )
        err.print(
            "--wait NAME is deprecated on `executions input`: use --name NAME (--wait means "
            "'block until it ends' on the other commands).",
            style="yellow",
            highlight=False,
            markup=False,
        )
        name = old_name
    limit = settings().max_input_bytes
    text = value_text(value, option="--value", unchanged=unchanged, limit=limit)
    json_value(text, option="--value", unchanged=unchanged, given=value)
    with cli_errors():
        client = client_for(db)
        execution_id = client.resolve_id(execution_id)
        # Asked first: once the input is in, the execution may be running, or even done.
        then = client.continuation(execution_id)
        record = client.input_json(execution_id, name, text, by=by or who())
    if as_json:
        dump({**views.wait_json(record), "continues": {"live": then.live, "message": then.message}})
        return
    line = Text("Input recorded for wait ")
    line.append(record.name, style="bold")
    line.append(f" of {record.execution_id}.")
    out.print(line)
    if then.live is False:
        err.print(
            then.message[0].upper() + then.message[1:] + ".",
            style="yellow",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    else:
        say(then.message[0].upper() + then.message[1:] + ".")
