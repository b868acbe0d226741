"""What the `tether` command prints: records as Rich tables and lines (records as JSON
data are `_ops.views`, shared with the servers).

Nothing here reads the store or changes anything; `executions` fetches records through
`Client` and hands them here. Text that comes from users or from the store (positions,
names, results, questions, output, error messages) is always wrapped in `Text`, never
parsed as Rich markup: a branch key `[b]` or `/` is data. Positions are shown the way
`replay --from` takes them (`display`: branch keys as given, `]` and `\\` escaped).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Container, Iterable
from typing import Any

from rich.console import Group, RenderableType
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from .._core import waits as _waits
from .._core.positions import display, sort_key
from .._core.status import Status
from .._ops.views import args_json, as_data, iso, progress_json, progress_since, warnings
from .._runtime.engine import LIFECYCLE_EVENTS
from .._runtime.records import (
    CheckpointRecord,
    ErrorInfo,
    Event,
    ExecutionRecord,
    LogRecord,
    MessageRecord,
    WaitRecord,
)
from .._spend.usage import Usage

STATUS_STYLES = {
    "queued": "cyan",
    "running": "bold blue",
    "waiting": "bold yellow",
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "magenta",
    "retrying": "yellow",
    "pending": "bold yellow",
    "resolved": "green",
    "timed_out": "magenta",
    "slept": "green",
}
_LEVEL_STYLES = {
    "stderr": "red",
    "warning": "yellow",
    "error": "bold red",
    "critical": "bold red",
    "debug": "dim",
}

# --- small formatting helpers -----------------------------------------------------------------


def when(moment: dt.datetime | None) -> str:
    """A timestamp for people: local time, to the second."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment is not None else ""


def short_when(moment: dt.datetime | None) -> str:
    """Local time: `15:09:13` today, `2026-11-25 15:09` before."""
    if moment is None:
        return ""
    local = moment.astimezone()
    if local.date() == dt.datetime.now().astimezone().date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M")


def duration(seconds: float | None) -> str:
    """`0.40s`, `12.3s`, `4m05s`, `2h03m`, `3d04h`."""
    if seconds is None:
        return ""
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def preview(value: Any, width: int = 60) -> str:
    """One line of a value: strings as they are, anything else as compact JSON."""
    text = value if isinstance(value, str) else compact(value)
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= width else text[: width - 1] + "…"


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def one_line(text: str | Text, style: str = "") -> Text:
    """A table cell that is cut with … instead of wrapping."""
    cell = Text(text, style=style) if isinstance(text, str) else text
    cell.no_wrap, cell.overflow = True, "ellipsis"
    return cell


def status_text(status: str) -> Text:
    return Text(str(status), style=STATUS_STYLES.get(str(status), ""))


def error_line(error: ErrorInfo | None) -> str:
    return f"{error.type}: {error.message}" if error is not None else ""


def cost_text(usage: Usage) -> str:
    """`$0.0123`; `$0.0123 + unknown (2 requests unpriced)` when partly known."""
    if usage.cost_usd is None:
        return "cost unknown" if usage.requests else "$0"
    text = f"${usage.cost_usd:.4f}" if usage.cost_usd < 100 else f"${usage.cost_usd:,.2f}"
    if usage.unpriced_requests:
        plural = "s" if usage.unpriced_requests != 1 else ""
        text += f" + unknown ({usage.unpriced_requests} request{plural} unpriced)"
    return text


def usage_line(usage: Usage) -> str:
    """`1,234 tokens (1,000 in, 200 of them cached, 234 out), 3 requests, $0.0123`."""
    cached = usage.cache_read_tokens + usage.cache_write_tokens
    detail = f"{usage.input_tokens:,} in"
    if cached:
        detail += f", {cached:,} of them cached"
    detail += f", {usage.output_tokens:,} out"
    plural = "s" if usage.requests != 1 else ""
    return (
        f"{usage.total_tokens:,} tokens ({detail}), {usage.requests:,} request{plural}, "
        f"{cost_text(usage)}"
    )


def watch_key(record: ExecutionRecord) -> tuple[Any, ...]:
    """What counts as a change for `watch` (time passing does not)."""
    return (
        record.status.value,
        tuple((cp.position, cp.status.value, len(cp.attempts)) for cp in record.checkpoints),
        tuple((p.get("position"), p.get("name")) for p in progress_json(record)),
        tuple((w.name, w.status) for w in record.waits),
    )


# --- tables -----------------------------------------------------------------------------------


def executions_table(records: Iterable[ExecutionRecord], stranded: Container[str] = ()) -> Table:
    """One line per execution. `done` counts the checkpoint calls that succeeded; the ids in
    `stranded` are marked (`running, nobody on it`): no live process runs them. A delayed
    start shows when it starts; a `deadline` column comes when any execution has one."""
    records = list(records)
    deadlines = any(r.deadline is not None or r.deadline_after is not None for r in records)
    table = Table(box=None, pad_edge=False)
    # Flow and wait names are cut (…) when the terminal is narrow; the rest never is.
    table.add_column("id", no_wrap=True)
    table.add_column("flow", min_width=6)
    table.add_column("status", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("duration", no_wrap=True, justify="right")
    table.add_column("done", no_wrap=True, justify="right")
    table.add_column("waiting for", min_width=6)
    if deadlines:
        table.add_column("deadline", no_wrap=True)
    for r in records:
        status = status_text(r.status)
        if r.id in stranded:
            status.append(", nobody on it", style="bold red")
        cells: list[RenderableType] = [
            Text(r.id),
            one_line(r.flow),
            status,
            _started(r),
            duration(r.duration),
            "" if r.checkpoints_done is None else str(r.checkpoints_done),
            one_line(r.pending_wait or ""),
        ]
        if deadlines:
            cells.append(deadline_text(r))
        table.add_row(*cells)
    return table


def _started(r: ExecutionRecord) -> RenderableType:
    if r.started_at is not None:
        return when(r.started_at)
    if r.status is Status.QUEUED and r.not_before is not None:
        return Text(f"starts at {when(r.not_before)}", style="cyan")
    return Text("-", style="dim")


def deadline_text(r: ExecutionRecord) -> str:
    """When an execution is cancelled as timed out: a time, or seconds from its first start."""
    if r.deadline is not None:
        return when(r.deadline)
    if r.deadline_after is not None:
        return f"{duration(r.deadline_after)} after it starts"
    return ""


def waits_table(waits: Iterable[WaitRecord]) -> Table:
    """One line per pending wait, in the plain columns of `executions_table`."""
    table = Table(box=None, pad_edge=False)
    table.add_column("execution", no_wrap=True)
    for name in ("flow", "wait", "question", "expects"):
        table.add_column(name, min_width=6)
    table.add_column("deadline", no_wrap=True)
    table.add_column("since", no_wrap=True)
    for w in waits:
        expects = compact(w.json_schema) if w.json_schema else "any JSON"
        table.add_row(
            Text(w.execution_id),
            Text(w.flow or ""),
            Text(w.name),
            Text(preview(w.question) if w.question is not None else ""),
            Text(preview(expects)),
            when(w.deadline),
            when(w.created_at),
        )
    return table


def published_table(published: dict[str, CheckpointRecord]) -> Table:
    """The latest value per key a flow published (`tether.publish`), and where and when."""
    table = Table(box=None, pad_edge=False)
    table.add_column("key", no_wrap=True)
    table.add_column("value", min_width=6)
    table.add_column("at", no_wrap=True)
    table.add_column("when", no_wrap=True)
    for key, cp in sorted(published.items()):
        table.add_row(
            Text(key),
            Text(preview(as_data(cp.result_json))),
            Text(display(cp.position)),
            when(cp.finished_at),
        )
    return table


def messages_table(messages: Iterable[MessageRecord]) -> Table:
    """Messages sent to waits (`executions send`) that no wait has taken: kept until the flow
    reaches their wait (`sent`), or refused by its schema (`rejected`, with why)."""
    table = Table(box=None, pad_edge=False)
    table.add_column("wait", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("value", min_width=6)
    table.add_column("by", no_wrap=True)
    table.add_column("sent", no_wrap=True)
    table.add_column("why", min_width=6)
    for m in messages:
        status = "not delivered yet" if m.status == "sent" else m.status
        table.add_row(
            Text(m.name),
            Text(status, style="yellow" if m.status == "sent" else "red"),
            Text(preview(_message_value(m))),
            Text(m.sent_by or ""),
            when(m.sent_at),
            Text(m.error or ""),
        )
    return table


def _message_value(message: MessageRecord) -> Any:
    try:
        return message.value
    except Exception:  # a value of a class this process lacks: shown as stored
        return message.value_json


def waits_view(waits: Iterable[WaitRecord], width: int) -> list[RenderableType]:
    """`waits_table` when every cell fits whole in `width` columns; else one block per wait,
    each field on its own line, so that a long wait name is shown whole, never cut."""
    waits = list(waits)
    table = waits_table(waits)
    widths = [0] * len(table.columns)
    for i, column in enumerate(table.columns):
        cells = [
            str(column.header),
            *(c.plain if isinstance(c, Text) else str(c) for c in column.cells),
        ]
        widths[i] = max(len(c) for c in cells)
    if sum(widths) + 2 * (len(widths) - 1) <= width:
        return [table]
    lines: list[RenderableType] = []
    for w in waits:
        head = Text(w.execution_id, style="bold")
        head.append(f"  {w.flow or ''}  since {when(w.created_at)}", style="dim")
        lines.append(head)
        lines.append(Text("  wait      ") + Text(w.name, style="bold"))
        if w.question is not None:
            lines.append(Text(f"  question  {preview(w.question, 200)}"))
        expects = compact(w.json_schema) if w.json_schema else "any JSON"
        lines.append(Text(f"  expects   {preview(expects, 200)}"))
        if w.deadline is not None:
            lines.append(Text(f"  deadline  {when(w.deadline)}"))
    return lines


def header(record: ExecutionRecord) -> Table:
    """The execution's facts, one per line."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    status = status_text(record.status)
    if record.cancel_requested and not record.status.finished:
        status.append("  (cancel requested)", style="magenta")
    rows: list[tuple[str, RenderableType | None]] = [
        ("execution", Text(record.id)),
        ("flow", Text(f"{record.flow}  ({record.import_path})")),
        ("status", status),
        ("attempts", str(record.attempt)),
        ("created", when(record.created_at)),
        ("started", when(record.started_at) or None),
        ("finished", when(record.finished_at) or None),
        ("duration", duration(record.duration) or None),
        ("owner", _owner(record)),
        ("replay of", Text(record.replay_of) if record.replay_of else None),
        ("started by", Text(record.parent_id) if record.parent_id else None),
        ("arguments", _arguments(record)),
        ("usage", Text(usage_line(record.usage)) if record.usage else None),
        ("budget", Text(str(record.budget)) if record.budget is not None else None),
        ("deadline", deadline_text(record) or None),
    ]
    if record.status is Status.QUEUED and record.not_before is not None:
        rows.append(("not before", when(record.not_before)))
    if record.status is Status.SUCCEEDED:
        rows.append(("result", Text(preview(as_data(record.result_json), 200))))
    if record.error is not None:
        rows.append(("error", Text(error_line(record.error), style="red")))
    if record.status is Status.WAITING and record.wake_at is not None:
        rows.append(("wakes at", when(record.wake_at)))
    for i, warning in enumerate(warnings(record)):
        rows.append(("warnings" if i == 0 else "", Text(warning, style="yellow")))
    for label, value in rows:
        if value is not None:
            grid.add_row(label, value)
    return grid


def _owner(record: ExecutionRecord) -> Text | None:
    if record.owner is None:
        return None
    text = Text(record.owner)
    if record.lease_expires is not None:
        text.append(f"  (lease until {when(record.lease_expires)})", style="dim")
    return text


def _arguments(record: ExecutionRecord) -> Text | None:
    if not record.args_json:
        return None
    data = args_json(record)
    if isinstance(data, dict) and set(data) == {"args", "kwargs"}:
        parts = [compact(a) for a in data["args"]]
        parts += [f"{k}={compact(v)}" for k, v in data["kwargs"].items()]
        return Text(preview(", ".join(parts), 200))
    return Text(preview(data, 200))


def timeline(record: ExecutionRecord) -> Table:
    """Checkpoint calls, waits and the calls running now, in position order."""
    table = Table(box=None)
    table.add_column("#", justify="right", no_wrap=True)
    # Wrapped, never cut with …: a long wait name is copied from here into `input --name`.
    table.add_column("step", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("result / error")  # the one column that gives way (cells are one line)
    rows: list[tuple[str, int, list[RenderableType], dt.datetime | None]] = []
    for cp in record.checkpoints:
        rows.append((cp.position, 0, _checkpoint_row(cp), cp.started_at))
    for w in record.waits:
        rows.append((w.position, 1, _wait_row(w), w.created_at))
    now = dt.datetime.now(dt.UTC)
    done = {cp.position for cp in record.checkpoints if cp.status != "retrying"}
    for entry in record.progress:
        position = entry.get("position")
        if isinstance(position, int):  # written before positions were text
            position = str(position)
        if not isinstance(position, str) or position in done:
            continue
        since = iso(progress_since(entry))
        took = (now - dt.datetime.fromisoformat(since)).total_seconds() if since else None
        cells: list[RenderableType] = [
            Text(str(entry.get("name"))),
            Text("running", style=STATUS_STYLES["running"]),
            "",
            duration(took),
            one_line("running now…", "dim"),
        ]
        rows.append((position, 2, cells, None))
    ordered = sorted(rows, key=lambda r: (sort_key(r[0]), r[1]))
    for event in record.events:
        if event.kind not in LIFECYCLE_EVENTS:
            continue
        # After the last call or wait that began before it: where in the run it happened.
        index = max(
            (i + 1 for i, row in enumerate(ordered) if row[3] is not None and row[3] <= event.at),
            default=0,
        )
        ordered.insert(index, ("", 3, _event_row(event), event.at))
    for position, _, cells, _ in ordered:
        table.add_row(Text(display(position) if position else ""), *cells)
    return table


def _event_row(event: Event) -> list[RenderableType]:
    """A crash, takeover, suspension, wake or resume, with the process it names."""
    notable = event.level == "warning" or event.kind in ("takeover", "released", "crash_loop")
    style = "yellow" if notable else "dim"
    return [
        Text(event.kind, style=style),
        "",
        "",
        short_when(event.at),
        _wrapped(event.message, style),
    ]


def _wrapped(message: str, style: str) -> Text:
    # Folded onto more lines, never cut: the pid and host at its end are what it is read for.
    return Text(message, style=style, overflow="fold")


def _checkpoint_row(cp: CheckpointRecord) -> list[RenderableType]:
    if cp.status == "succeeded":
        value = preview(as_data(cp.result_json), 200)
        detail = Text("override → ", style="yellow") if cp.metadata.get("override") else Text()
        detail.append(value)
    else:
        detail = Text(preview(error_line(cp.error) or _last_error(cp), 200), style="red")
    status = status_text(cp.status)
    if cp.copied_from is not None:  # a replay's copy: it did not run (again) here
        status.append(" (copied)", style="dim")
    return [
        Text(cp.name),
        status,
        str(len(cp.attempts)),
        Text("-", style="dim") if cp.copied_from is not None else duration(cp.duration),
        one_line(detail),
    ]


def _last_error(cp: CheckpointRecord) -> str:
    errors = [a.error for a in cp.attempts if a.error]
    return errors[-1] if errors else ""


def _wait_row(w: WaitRecord) -> list[RenderableType]:
    detail = Text()
    if w.kind == "child":
        child = str(w.metadata.get("execution", w.name))
        name = Text(_waits.label(w.kind, w.name, w.position), style="italic")
        detail.append(child)
        if w.status == "resolved":
            outcome = as_data(w.value_json)
            status = outcome.get("status") if isinstance(outcome, dict) else None
            detail.append(" → ", style="dim")
            detail.append(str(status), style=STATUS_STYLES.get(str(status), ""))
    elif w.kind == "sleep":
        name = Text(_waits.label(w.kind, w.name, w.position), style="italic")
        if w.deadline is not None:
            detail.append(f"until {when(w.deadline)}")
    else:
        name = Text(_waits.label(w.kind, w.name, w.position), style="italic")
        if w.question is not None:
            detail.append(preview(w.question, 40))
        if w.status == "resolved":
            detail.append(" → ", style="dim")
            detail.append(preview(as_data(w.value_json), 30), style="green")
            if w.resolved_by:
                detail.append(f" by {w.resolved_by}", style="dim")
        elif w.status == "pending" and w.deadline is not None:
            detail.append(f" (until {when(w.deadline)})", style="dim")
    status = status_text(w.status)
    if w.copied_from is not None:  # a replay's copy: it waited in the source, not here
        status.append(" (copied)", style="dim")
        return [name, status, "", Text("-", style="dim"), one_line(detail)]
    end = w.resolved_at or (None if w.status != "pending" else dt.datetime.now(dt.UTC))
    took = (end - w.created_at).total_seconds() if end is not None else None
    return [name, status, "", duration(took), one_line(detail)]


def execution_view(
    record: ExecutionRecord, attention: str | None = None, then: str | None = None
) -> Group:
    """What `get` prints: the header, then the timeline, then the child flows, and what
    to do: `attention` (`Client.attention`: nobody runs it) or, while it waits, how to
    answer it and who continues it then (`then`: `Client.continuation`)."""
    parts: list[RenderableType] = [header(record), Text()]
    if record.checkpoints or record.waits or record.progress:
        parts.append(timeline(record))
    else:
        parts.append(Text("No checkpoint calls recorded yet.", style="dim"))
    if record.children:
        parts += [Text(), Text("Children", style="bold"), executions_table(record.children)]
    published = record.published_calls
    if published:
        parts += [Text(), Text("Published", style="bold"), published_table(published)]
    unsettled = [m for m in record.messages if m.status != "delivered"]
    if unsettled:
        parts += [Text(), Text("Messages", style="bold"), messages_table(unsettled)]
    if attention is not None:
        parts += [Text(), attention_text(attention)]
    if record.status is Status.WAITING:
        parts += [Text(), input_hint(record) or timer_hint(record)]
        if then is not None:
            parts.append(Text(f"Then {then}.", style="dim"))
    return Group(*parts)


def attention_text(attention: str) -> Text:
    text = Text("Nobody runs it: ", style="bold red")
    text.append(attention[0].upper() + attention[1:] + ".")
    return text


def input_hint(record: ExecutionRecord) -> Text | None:
    """How to give a waiting execution its input."""
    pending = [w for w in record.pending_waits if w.kind == "input"]
    if record.status is not Status.WAITING or not pending:
        return None
    w = pending[0]
    text = Text("Waiting for input ", style="yellow")
    text.append(repr(w.name), style="bold yellow")
    if w.json_schema:
        text.append(f" (expects {preview(w.json_schema, 80)})")
    text.append(". Give it with:\n  ")
    option = "" if len(pending) == 1 else f" --name {w.name}"
    example = "true" if (w.json_schema or {}).get("type") == "boolean" else "JSON"
    text.append(f"tether executions input {record.id}{option} --value {example}", style="bold")
    return text


def timer_hint(record: ExecutionRecord) -> Text:
    """A waiting execution with no input to give: it sleeps (`tether.sleep`), or waits for a
    child flow."""
    children = [w for w in record.pending_waits if w.kind == "child"]
    if children:
        child = children[0].metadata.get("execution", children[0].name)
        return Text(
            f"Execution {record.id} waits for its child execution {child}; it continues when "
            "that one ends.",
            style="yellow",
        )
    text = Text(f"Execution {record.id} sleeps (tether.sleep)", style="yellow")
    if record.wake_at is not None:
        text.append(f" until {when(record.wake_at)}")
        left = (record.wake_at - dt.datetime.now(dt.UTC)).total_seconds()
        if left > 0:
            text.append(f", {duration(left)} from now")
    text.append("; nothing holds it meanwhile, and it continues when it wakes.")
    return text


def live_view(record: ExecutionRecord, attention: str | None = None) -> Group:
    """What `watch` shows while the execution runs (with `attention`: why nothing does)."""
    line = Text()
    line.append(record.id, style="bold")
    line.append(f"  {record.flow}  ")
    line.append_text(status_text(record.status))
    done = record.checkpoints_done or 0
    line.append(f"  {done} checkpoint{'s' if done != 1 else ''} done")
    if record.duration is not None:
        line.append(f"  {duration(record.duration)}", style="dim")
    now = _running_now(record)
    if record.status is Status.QUEUED:
        now = "queued: waiting for a process to run it (tether worker, or executions resume)"
    parts: list[RenderableType] = [line, Text()]
    if record.checkpoints or record.waits or record.progress:
        parts += [timeline(record), Text()]
    if attention is not None:
        parts.append(attention_text(attention))
    else:
        parts.append(Spinner("dots", text=Text(now or "running…")))
    return Group(*parts)


def _running_now(record: ExecutionRecord) -> str:
    running = progress_json(record)
    return (
        ("running " + ", ".join(f"{p['name']} (#{p['position']})" for p in running))
        if running
        else ""
    )


def watch_line(record: ExecutionRecord, attention: str | None = None) -> Text:
    """One line per change, for `watch` when the output is not a terminal."""
    line = Text(dt.datetime.now().strftime("%H:%M:%S "), style="dim")
    line.append_text(status_text(record.status))
    done = record.checkpoints_done or 0
    line.append(f"  {done} checkpoint{'s' if done != 1 else ''} done")
    running = progress_json(record)
    if running:
        line.append("  now: " + ", ".join(f"{p['name']} (#{p['position']})" for p in running))
    if record.pending_waits:
        line.append("  waiting for: " + ", ".join(w.name for w in record.pending_waits))
    if attention is not None:
        line.append(f"  nobody runs it: {attention}", style="red")
    return line


def log_line(r: LogRecord) -> Text:
    """`#3 search  stdout  the text` (each line of multi-line output gets the prefix)."""
    where = f"#{display(r.position)} {r.checkpoint or '?'}" if r.position is not None else "(flow)"
    kind = r.level if r.stream == "log" else r.stream
    prefix = Text(f"{where}  ", style="cyan")
    prefix.append(kind, style=_LEVEL_STYLES.get(kind, "dim"))
    prefix.append("  ")
    body = r.message[:-1] if r.message.endswith("\n") else r.message
    if r.stream == "log" and r.logger:
        body = f"{r.logger}: {body}"
    line = Text()
    for i, part in enumerate(body.split("\n") or [""]):
        if i:
            line.append("\n")
        line.append_text(prefix)
        line.append(part)
    return line
