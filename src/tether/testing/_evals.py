"""pydantic-evals evaluators in replay suites: `EqualsExpected`, `Contains`, `IsInstance`,
`LLMJudge` or a subclass of `Evaluator` of the user's, scoring both sides of a case.

An evaluator is recognised by its shape (an instance with `evaluate_async` and
`get_default_evaluation_name`), never by importing pydantic_evals: a replay with plain
function evaluators, or none, does not import it, and the main environment need not have it
(the `evals` extra). pydantic_evals is imported only to build the context of an
evaluator the user already made, so it is there.

Each side of a case becomes one `EvaluatorContext`: `inputs` the flow's recorded arguments
(`{"args": [...], "kwargs": {...}}`), `output` the side's result (None for a failure, whose
error is `attributes["error"]`), `expected_output` the recorded result, `metadata` what flow
code logged (`tether.log(KEY=...)`), `duration` the side's seconds. tether records no
OpenTelemetry spans: `span_tree` raises, saying so, and the case is an error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
from collections.abc import Awaitable, Mapping
from typing import Any

from .._core import imports as _imports
from ..errors import UsageError

INSTALL = "pip install -e '.[evals]' in a clone of tether (or pip install pydantic-evals)"
NO_SPANS = (
    "tether replay suites record no OpenTelemetry spans: span-based evaluators "
    "(HasMatchingSpan, ctx.span_tree) are not supported; score the output, inputs or metadata"
)


@dataclasses.dataclass(slots=True)
class Scored:
    """What evaluators said about one side of a case: numbers (a bool is 1 or 0), labels,
    and the reasons given with either, each by result name."""

    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)


def is_evaluator(obj: object) -> bool:
    """Whether `obj` is a pydantic-evals `Evaluator` instance (by its shape)."""
    return (
        not isinstance(obj, type)
        and callable(getattr(obj, "evaluate_async", None))
        and callable(getattr(obj, "get_default_evaluation_name", None))
    )


def is_evaluator_class(obj: object) -> bool:
    return isinstance(obj, type) and all(
        callable(getattr(obj, attr, None))
        for attr in ("evaluate_async", "get_default_evaluation_name")
    )


def default_name(evaluator: Any) -> str:
    return str(evaluator.get_default_evaluation_name())


def load(spec: str) -> Any:
    """The evaluator `--evaluator MODULE:NAME` names: a function, a pydantic-evals evaluator,
    or an evaluator class that needs no arguments (made here). Imported from the path the
    user gave, as `--import` imports modules, never from anything stored."""
    try:
        found = _imports.load_object(spec, "--evaluator")
    except UsageError as exc:
        if _missing_evals(exc.__cause__):
            raise UsageError(
                f"--evaluator {spec}: pydantic-evals is not installed; {INSTALL}"
            ) from exc
        raise
    if is_evaluator_class(found):
        try:
            found = found()
        except TypeError as exc:
            raise UsageError(
                f"--evaluator {spec}: the class {found.__name__} needs arguments ({exc}); name "
                "an instance instead, made in a module of yours (polite = LLMJudge(rubric=...))"
            ) from exc
    if not callable(found) and not is_evaluator(found):
        raise UsageError(
            f"--evaluator {spec} is {found!r}: name a function (Sample) -> bool | float | dict, "
            "or a pydantic-evals Evaluator"
        )
    return found


def _missing_evals(exc: BaseException | None) -> bool:
    name = getattr(exc, "name", None) or ""
    return isinstance(exc, ModuleNotFoundError) and name.split(".")[0] == "pydantic_evals"


def evaluate(
    evaluator: Any,
    name: str,
    *,
    case_name: str,
    inputs: Any,
    output: Any,
    error: str | None,
    expected: Any,
    metadata: Any,
    duration: float,
) -> Scored:
    """Run a pydantic-evals evaluator on one side of a case and map what it returns."""
    try:
        from pydantic_evals.evaluators import EvaluatorContext
        from pydantic_evals.otel._errors import SpanTreeRecordingError
    except ImportError as exc:  # an evaluator-shaped object without pydantic-evals
        raise UsageError(f"evaluator {name!r} needs pydantic-evals: {INSTALL}") from exc
    context = EvaluatorContext(
        name=case_name,
        inputs=inputs,
        metadata=metadata,
        expected_output=expected,
        output=output,
        duration=duration,
        _span_tree=SpanTreeRecordingError(NO_SPANS),
        attributes={} if error is None else {"error": error},
        metrics={},
    )
    return mapped(name, default_name(evaluator), _run(evaluator.evaluate_async(context)))


def mapped(name: str, default: str, output: Any) -> Scored:
    """pydantic-evals' `EvaluatorOutput` as scores, labels and reasons. A single value is
    named `name`; a mapping's results by their keys, but the evaluator's own default name
    (LLMJudge's) is `name` too, so a name given in `evaluators={...}` shows."""
    scored = Scored()
    if isinstance(output, Mapping):
        for key, value in output.items():
            _add(scored, name if key == default else str(key), value)
    else:
        _add(scored, name, output)
    return scored


def _add(scored: Scored, key: str, value: Any) -> None:
    reason = getattr(value, "reason", None)
    if hasattr(value, "value") and not isinstance(value, (bool, int, float, str)):
        value = value.value  # an EvaluationReason
    if isinstance(value, bool):
        scored.scores[key] = 1.0 if value else 0.0
    elif isinstance(value, (int, float)) and math.isfinite(value):
        scored.scores[key] = float(value)
    elif isinstance(value, str):
        scored.labels[key] = value
    else:
        raise UsageError(
            f"evaluator result {key!r} is {value!r}; a pydantic-evals evaluator returns a "
            "bool, a finite number, a string (a label) or an EvaluationReason of one"
        )
    if reason:
        scored.reasons[key] = str(reason)


def _run(awaitable: Awaitable[Any]) -> Any:
    async def run() -> Any:
        return await awaitable

    return asyncio.run_coroutine_threadsafe(run(), _loop()).result()


_lock = threading.Lock()
_running: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    """One event loop, on a thread of its own, for every evaluator this process runs: it
    works whether or not the caller's thread runs a loop (`replay` called from async code),
    and the HTTP clients a judge's model keeps between calls stay on the loop they were made
    on (a loop per call would close theirs under them)."""
    global _running
    with _lock:
        if _running is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="tether-evals", daemon=True).start()
            _running = loop
        return _running
