"""What a replay suite reports: each case's outcomes, call diffs, scores and verdict, and
the whole run as text, JSON and Markdown (see `_replay.py`)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from .._core.status import Status
from .._spend import usage as _usage

Verdict = Literal["unchanged", "changed", "improved", "regressed", "error"]
VERDICTS: tuple[Verdict, ...] = ("unchanged", "changed", "improved", "regressed", "error")


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """How one side of a case ended: `status` "succeeded" with `result`, or "failed" with
    `error` ("Type: message"); other statuses (waiting, cancelled) as they are."""

    status: str
    result: Any = None  # as data (a stored value is never restored here)
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.status != Status.SUCCEEDED.value

    def __str__(self) -> str:
        if self.status == Status.SUCCEEDED.value:
            return f"result {json.dumps(self.result, default=str)}"
        if self.error:
            return f"{self.status}: {self.error}"
        return self.status


@dataclasses.dataclass(frozen=True, slots=True)
class CallDiff:
    """A recorded checkpoint call and its replayed counterpart, where they differ.
    `kind`: "changed" (another outcome), "renamed" (another call at the position), "added"
    (only the replay made it), "removed" (only the recording has it)."""

    position: str
    name: str
    kind: str
    recorded: Any = None
    replayed: Any = None

    def __str__(self) -> str:
        if self.kind == "added":
            return f"+ {self.position} {self.name}: {short(self.replayed)}"
        if self.kind == "removed":
            return f"- {self.position} {self.name}: {short(self.recorded)}"
        return f"~ {self.position} {self.name}: {short(self.recorded)} -> {short(self.replayed)}"


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """What an evaluator scores: one side of a case. `output` is the side's result (as data),
    `error` its error; `recorded` is the recorded side (the reference) for both; `metadata`
    what the recorded flow code logged (`tether.log`), `duration` the side's seconds."""

    execution_id: str
    flow: str
    inputs: Any
    output: Any
    error: str | None
    side: Literal["recorded", "replayed"]
    recorded: Outcome
    metadata: Any = None
    duration: float = 0.0


@dataclasses.dataclass(slots=True)
class ReplayCase:
    """One recorded execution replayed."""

    execution_id: str
    flow: str
    verdict: Verdict
    recorded: Outcome
    replayed: Outcome | None  # None when the case could not run (see `problem`)
    diffs: list[CallDiff] = dataclasses.field(default_factory=list)
    problem: str | None = None  # why the case is an error
    scores: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    # What pydantic-evals evaluators gave besides numbers, (recorded, replayed) by name:
    # labels (string results) and the reasons given with a score or a label.
    labels: dict[str, tuple[str | None, str | None]] = dataclasses.field(default_factory=dict)
    reasons: dict[str, tuple[str | None, str | None]] = dataclasses.field(default_factory=dict)
    seconds: tuple[float, float] = (0.0, 0.0)  # how long each side ran
    answered: int = 0  # calls answered from the recording
    live: list[str] = dataclasses.field(default_factory=list)  # calls that ran live
    recorded_usage: _usage.Usage = dataclasses.field(default_factory=_usage.Usage)
    replayed_usage: _usage.Usage = dataclasses.field(default_factory=_usage.Usage)
    replay_id: str | None = None  # the execution's id in the scratch store

    def to_json(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "flow": self.flow,
            "verdict": self.verdict,
            "problem": self.problem,
            "recorded": _outcome_json(self.recorded),
            "replayed": None if self.replayed is None else _outcome_json(self.replayed),
            "diffs": [dataclasses.asdict(d) for d in self.diffs],
            "scores": {k: {"recorded": a, "replayed": b} for k, (a, b) in self.scores.items()},
            "labels": {k: {"recorded": a, "replayed": b} for k, (a, b) in self.labels.items()},
            "reasons": {k: {"recorded": a, "replayed": b} for k, (a, b) in self.reasons.items()},
            "answered": self.answered,
            "live": self.live,
            "usage": {
                "recorded": _usage_json(self.recorded_usage),
                "replayed": _usage_json(self.replayed_usage),
            },
        }


@dataclasses.dataclass(slots=True)
class ReplayReport:
    """What `replay` ran and found. `str(report)` is a readable summary, `to_markdown()` a
    pull-request comment, `to_json()` data; `regressions` gates CI."""

    cases: list[ReplayCase] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def totals(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(VERDICTS, 0)
        for case in self.cases:
            counts[case.verdict] += 1
        return counts

    @property
    def regressions(self) -> list[ReplayCase]:
        return [c for c in self.cases if c.verdict == "regressed"]

    @property
    def errors(self) -> list[ReplayCase]:
        return [c for c in self.cases if c.verdict == "error"]

    @property
    def ok(self) -> bool:
        """No case regressed and every case ran."""
        return not self.regressions and not self.errors

    def usage(self) -> tuple[_usage.Usage, _usage.Usage]:
        """Model usage and cost of the recordings, and of the replays."""
        return (
            _usage.total(c.recorded_usage for c in self.cases),
            _usage.total(c.replayed_usage for c in self.cases),
        )

    def to_json(self) -> dict[str, Any]:
        recorded, replayed = self.usage()
        return {
            "ok": self.ok,
            "totals": self.totals,
            "seconds": round(self.seconds, 3),
            "usage": {"recorded": _usage_json(recorded), "replayed": _usage_json(replayed)},
            "cases": [c.to_json() for c in self.cases],
        }

    def __str__(self) -> str:
        lines = [f"replayed {len(self.cases)} executions ({self.seconds:.1f}s): {_totals(self)}"]
        for case in self.cases:
            lines.append(f"  {case.verdict:<10} {case.execution_id} {case.flow}")
            lines.extend(f"    {line}" for line in _details(case))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The report as a pull-request comment."""
        recorded, replayed = self.usage()
        mark = "passed" if self.ok else "FAILED"
        lines = [
            f"### tether replay: {mark}",
            "",
            f"{len(self.cases)} recorded executions replayed: {_totals(self)}.",
            "",
            f"Model usage: recorded {_usage_text(recorded)}; replayed {_usage_text(replayed)}.",
            "",
            "| verdict | execution | flow | recorded | replayed |",
            "|---|---|---|---|---|",
        ]
        for case in self.cases:
            got = case.problem if case.replayed is None else str(case.replayed)
            lines.append(
                f"| {case.verdict} | `{case.execution_id}` | `{case.flow}` | "
                f"{_cell(str(case.recorded))} | {_cell(got or '')} |"
            )
        details = [c for c in self.cases if c.verdict != "unchanged"]
        for case in details:
            lines += ["", f"<details><summary>{case.verdict}: <code>{case.execution_id}</code>"
                      f" ({case.flow})</summary>", "", "```diff"]  # fmt: skip
            lines += _details(case)
            lines += ["```", "", "</details>"]
        return "\n".join(lines) + "\n"


# --- text -----------------------------------------------------------------------------------


def short(value: Any, most: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= most else text[: most - 3] + "..."


def _totals(report: ReplayReport) -> str:
    return ", ".join(f"{n} {v}" for v, n in report.totals.items() if n) or "nothing selected"


def _details(case: ReplayCase) -> list[str]:
    lines = []
    if case.problem:
        lines.append(f"! {case.problem}")
    if case.replayed is not None and case.replayed != case.recorded:
        lines.append(f"- {case.recorded}")
        lines.append(f"+ {case.replayed}")
    for name, (before, after) in case.scores.items():
        if before != after:
            lines.append(f"~ score {name}: {before:g} -> {after:g}{_why(case, name)}")
    for name, (was, now) in case.labels.items():
        if was != now:
            lines.append(f"~ label {name}: {short(was)} -> {short(now)}{_why(case, name)}")
    lines.extend(str(d) for d in case.diffs)
    if case.live:
        lines.append(f"  ran live: {', '.join(case.live)}")
    return lines


def _why(case: ReplayCase, name: str) -> str:
    """The replayed side's reason for a result that moved (an LLM judge's verdict)."""
    reason = case.reasons.get(name, (None, None))[1]
    return f" ({short(reason, 120).strip(chr(34))})" if reason else ""


def _cell(text: str) -> str:
    return short(text, 60).strip('"').replace("|", "\\|").replace("\n", " ")


def _usage_text(usage: _usage.Usage) -> str:
    cost = "" if usage.cost_usd is None else f", ${usage.cost_usd:.4f}"
    return f"{usage.requests} requests, {usage.total_tokens} tokens{cost}"


def _usage_json(usage: _usage.Usage) -> dict[str, Any]:
    return {"requests": usage.requests, "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens, "cost_usd": usage.cost_usd}  # fmt: skip


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {"status": outcome.status, "result": outcome.result, "error": outcome.error}
