"""`tether replay-test`: replay recorded executions against the current code, a CI gate.

Glue over `tether.testing.replay`: the options become its arguments, the report is printed
(or written as JSON and Markdown), and the exit code says whether the gate passed.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import FAILED, OK, cli_errors, client_for, dump, load_named, running_here, say
from .options import MAX_COUNT, DbOption, ImportOption, JsonOption, ScriptOption

_MODES = ("recorded", "live")


def replay_test_command(
    selectors: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="ID",
            help="Executions to replay (a unique prefix of an id is enough). With filters "
            "too, only those of them the filters match. None: every execution the filters "
            "match. `export` first: write them to the suite file --out instead.",
            show_default=False,
        ),
    ] = None,
    flow: Annotated[
        str | None, typer.Option("--flow", metavar="NAME", help="Executions of this flow.")
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status", metavar="STATUS", help="Executions with this status (repeatable)."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", metavar="TIME", help="Executions created at or after TIME (ISO 8601)."
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until", metavar="TIME", help="Executions created at or before TIME (ISO 8601)."
        ),
    ] = None,
    tag: Annotated[
        str | None,
        typer.Option(
            "--tag",
            metavar="KEY[=VALUE]",
            help="Executions whose flow code logged KEY (with this VALUE): tether.log(KEY=...).",
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", metavar="N", min=1, max=MAX_COUNT, help="At most this many executions."
        ),
    ] = 100,
    tools: Annotated[
        list[str] | None,
        typer.Option(
            "--tools",
            metavar="MODE|NAME=MODE",
            help="How calls are answered: `recorded` (default: from the recording, matched "
            "by name and arguments in order; a call it cannot answer fails the case), `live` "
            "(run for real), or per tool or checkpoint: `NAME=recorded`, `NAME=live`, "
            "`NAME=JSON` (a static answer). Repeatable.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            metavar="MODEL",
            help="Durable agents call this model live instead of answering model requests "
            "from the recording: `test` (Pydantic AI's TestModel, offline) or a model name "
            "Pydantic AI knows (`openai:gpt-4o`).",
        ),
    ] = None,
    evaluator_specs: Annotated[
        list[str] | None,
        typer.Option(
            "--evaluator",
            metavar="MODULE:NAME",
            help="Score both sides with this evaluator, imported from your code: a function "
            "(Sample) -> bool | float | dict, or a pydantic-evals Evaluator (an instance, or a "
            "class that needs no arguments; pip install -e '.[evals]'). A lower replayed "
            "score is a regression. Repeatable.",
        ),
    ] = None,
    markdown: Annotated[
        Path | None,
        typer.Option(
            "--markdown", metavar="FILE", help="Write the report as Markdown (a PR comment)."
        ),
    ] = None,
    suite: Annotated[
        Path | None,
        typer.Option(
            "--suite",
            metavar="FILE",
            help="Replay the executions of this suite file (`replay-test export` wrote it) "
            "instead of a store's: no database needed.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", metavar="FILE", help="With `export`: the suite file to write."),
    ] = None,
    redact_keys: Annotated[
        list[str] | None,
        typer.Option(
            "--redact-key",
            metavar="KEY",
            help="With `export`: hide the value of every dict key KEY (`***`) in what is "
            "written, e.g. api_key, email. Repeatable. The store keeps everything.",
        ),
    ] = None,
    imports: ImportOption = None,
    script: ScriptOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Replay recorded executions against the current code, in a scratch store (the
    recording's store is only read), and report each as unchanged, changed, improved,
    regressed or error.

    `tether replay-test export [ID]... --out suite.jsonl` writes the selected executions and
    their recorded calls to a file instead, which `--suite suite.jsonl` replays where there is
    no database (values as tether's JSON data, nothing pickled; `--redact-key` hides secrets).

    Exit 0 when no case regressed or failed to run, 1 otherwise (a CI gate); 2 for a usage
    error (an unloaded flow is a case error, exit 1), 3 when a named execution does not exist,
    4 when the store fails.
    """
    from ..testing import export, replay
    from ..testing._evals import load as load_evaluator

    chosen = list(selectors or [])
    if chosen[:1] == ["export"]:
        with cli_errors():
            if out is None:
                raise typer.BadParameter("export writes a suite file: give --out FILE")
            client_for(db, readonly=True)
            count = export(
                *chosen[1:], out=out, db=db, flow=flow, status=status,
                since=_time(since, "--since"), until=_time(until, "--until"), tag=tag,
                limit=limit, redact_keys=redact_keys or (),
            )  # fmt: skip
        say(f"wrote {count} execution(s) to {out}")
        raise typer.Exit(OK)
    with cli_errors(), running_here(queue=False, as_json=as_json):
        modes = _tool_modes(tools or [])
        if suite is None:
            client_for(db, readonly=True)  # the store must exist: nothing is created here
        load_named(imports, script)
        evaluators = [load_evaluator(spec) for spec in evaluator_specs or ()]
        report = replay(
            *chosen,
            suite=suite,
            db=None if suite is not None else db,
            flow=flow,
            status=status,
            since=_time(since, "--since"),
            until=_time(until, "--until"),
            tag=tag,
            limit=limit,
            tools=modes,
            model=model,
            evaluators=evaluators or None,
        )
        if markdown is not None:
            markdown.write_text(report.to_markdown())
    if as_json:
        dump(report.to_json())
    else:
        say(str(report))
    raise typer.Exit(OK if report.ok else FAILED)


def _tool_modes(given: list[str]) -> dict[str, Any]:
    modes: dict[str, Any] = {}
    for item in given:
        if item in _MODES:
            modes["*"] = item
            continue
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise typer.BadParameter(
                f"{item!r}: give `recorded`, `live`, or NAME=recorded, NAME=live or NAME=JSON "
                "(a static answer, e.g. charge='\"ok\"')",
                param_hint="'--tools'",
            )
        if value in _MODES:
            modes[name] = value
            continue
        try:
            modes[name] = json.loads(value)
        except json.JSONDecodeError:
            raise typer.BadParameter(
                f"{item!r}: a static answer is JSON, and {value!r} is not; a string needs "
                f"JSON quotes: {name}='{json.dumps(value)}'",
                param_hint="'--tools'",
            ) from None
    return modes


def _time(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO 8601 time (2026-01-31 or 2026-01-31T12:00:00+00:00)",
            param_hint=f"'{option}'",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()
