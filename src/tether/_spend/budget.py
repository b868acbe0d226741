"""Budgets: a limit on what one execution may spend on model calls.

The budget is stored with the execution (its `options`), so every process that resumes it
enforces the same limit. What counts as spent is what the execution's recorded checkpoint
calls spent (`tether._usage`), failed attempts included, plus what the call running now has
spent so far.

**Before the call that would exceed it** means: a live model request is not started when
the tokens (or dollars) spent so far, plus an estimate of the request, exceed the limit. The
estimate is the request's input tokens (its messages and tool definitions, about four
characters a token; no network call to count them) plus its `max_tokens` setting when one is
given (then the request cannot go past the limit by its output), else nothing for the
output (then the request can go past the limit by at most its own output, and the next
request is stopped). A cost limit prices the estimate with the model's price; a model
whose price is unknown cannot be kept to a cost limit, so its requests are stopped too
(give its price with `tether.configure(prices=...)`). Replayed calls are not requests and
are never stopped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .._core import serde as _serde
from .._core.context import Frame, Run, Spending, current_frame, current_run
from ..errors import BudgetExceeded, UsageError
from . import usage as _usage
from .prices import cost_of

_OPTION = "budget"


@dataclass(frozen=True, slots=True)
class Budget:
    """What one execution may spend on model calls, in tokens and/or US dollars.

    ```python
    @tether.flow(budget=tether.Budget(max_tokens=200_000, max_cost_usd=2.0))
    async def research(topic: str) -> str: ...

    research.options(budget=tether.Budget(max_cost_usd=10)).run("a bigger topic")
    ```

    A model request that would go over it is not made: `tether.BudgetExceeded` is raised in
    the flow instead. "Would go over" is decided before the request, from what was spent
    plus an estimate of the request: its input (about four characters a token) and its
    `max_tokens` setting when given; without one, a request can go past the limit by its own
    output, and the next is stopped. A cost limit with a model whose price is unknown stops
    the request (give prices with `tether.configure(prices=...)`). Tokens are input plus
    output tokens, cached ones included.
    """

    max_tokens: int | None = None
    max_cost_usd: float | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is None and self.max_cost_usd is None:
            raise UsageError("a Budget needs a limit: give max_tokens=, max_cost_usd=, or both")
        tokens = self.max_tokens
        if tokens is not None and (
            isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0
        ):
            raise UsageError(f"max_tokens is a positive whole number, not {tokens!r}")
        cost = self.max_cost_usd
        if cost is not None and (
            isinstance(cost, bool)
            or not isinstance(cost, int | float)
            or not math.isfinite(cost)
            or cost <= 0
        ):
            raise UsageError(f"max_cost_usd is a positive number of dollars, not {cost!r}")

    def __str__(self) -> str:
        parts = []
        if self.max_tokens is not None:
            parts.append(f"{self.max_tokens:,} tokens")
        if self.max_cost_usd is not None:
            parts.append(f"${self.max_cost_usd:g}")
        return " and ".join(parts)


def checked(budget: Any) -> Budget | None:
    if budget is None or isinstance(budget, Budget):
        return budget
    raise UsageError(f"budget is a tether.Budget(max_tokens=..., max_cost_usd=...), not {budget!r}")


# --- stored with the execution ---------------------------------------------------------


def to_options(budget: Budget | None) -> str | None:
    """The execution's stored options for this budget (None: no budget)."""
    if budget is None:
        return None
    return _serde.dumps(
        {_OPTION: {"max_tokens": budget.max_tokens, "max_cost_usd": budget.max_cost_usd}}
    )


def from_options(text: str | None) -> Budget | None:
    if not text or _OPTION not in text:
        return None
    data = json.loads(text).get(_OPTION)
    if not isinstance(data, dict):
        return None
    return Budget(max_tokens=data.get("max_tokens"), max_cost_usd=data.get("max_cost_usd"))


# --- the run's spend slot --------------------------------------------------------------


class RunSpend:
    """What one run with a budget spends, in its `spend` slot (`tether._core.context.Spending`):
    the budget, and the usage it is checked against: of the calls recorded before this run
    (decoded only when a budget asks), committed by this run per position, and of calls a
    retry forgot."""

    __slots__ = ("budget", "committed_usage", "forgotten_usage", "recorded_usage")

    def __init__(self, budget: Budget | None) -> None:
        self.budget = budget
        self.recorded_usage: dict[str, _usage.Usage] | None = None
        self.committed_usage: dict[str, _usage.Usage] = {}
        self.forgotten_usage: _usage.Usage | None = None

    def resume_call(self, frame: Frame, prior_metadata: str | None) -> None:
        frame.usage = _usage.from_metadata(prior_metadata)

    def commit_call(self, frame: Frame, metadata: dict[str, Any]) -> dict[str, Any]:
        usage: _usage.Usage = frame.usage
        self.committed_usage[frame.position] = usage
        return _usage.with_usage(metadata, usage)


class _Unbudgeted:
    """The spend slot of every run without a budget, one for the process: its calls' usage is
    stored with them, and nothing reads it back during the run (only a budget's check adds it
    up), so there is nothing to keep per run. A `RunSpend` each was one more object per live
    execution for every full collection to walk."""

    __slots__ = ()

    def resume_call(self, frame: Frame, prior_metadata: str | None) -> None:
        frame.usage = _usage.from_metadata(prior_metadata)

    def commit_call(self, frame: Frame, metadata: dict[str, Any]) -> dict[str, Any]:
        usage: _usage.Usage = frame.usage
        return _usage.with_usage(metadata, usage)


_UNBUDGETED = _Unbudgeted()


def spend_for(options: str | None) -> Spending:
    """The spend slot of a run whose execution has these options (the stored JSON text)."""
    budget = from_options(options)
    return _UNBUDGETED if budget is None else RunSpend(budget)


def _spend_of(run: Run | None) -> RunSpend | None:
    spend = run.spend if run is not None else None
    return spend if isinstance(spend, RunSpend) else None


# --- the check before a live model request ---------------------------------------------


def active() -> bool:
    """True when a model request made now is under a budget (cheap: a few lookups)."""
    spend = _spend_of(current_run.get())
    return spend is not None and spend.budget is not None


def spent(run: Run, frame: Frame | None) -> _usage.Usage:
    """What the execution has spent: its recorded calls, and the call running now."""
    spend = _spend_of(run)
    if spend is None:  # a run nothing keeps track of: only the call running now counts
        return frame.usage if frame is not None and frame.usage is not None else _usage.Usage()
    if spend.recorded_usage is None:
        recorded = {
            position: usage
            for position, row in list(run.recorded.items())
            if (usage := _usage.from_metadata(row.metadata)) is not None
        }
        spend.recorded_usage = recorded
    usage_at = {**spend.recorded_usage, **spend.committed_usage}
    if frame is not None:
        usage_at.pop(frame.position, None)
    if spend.forgotten_usage is None:
        # Calls a `Client.retry()` forgot were still paid for: their usage is in the event.
        events = run.store.get_events(run.execution_id, kinds=(_usage.RETRY_EVENT,))
        spend.forgotten_usage = _usage.forgotten(events)
    total = _usage.total(usage_at.values()) + spend.forgotten_usage
    if frame is not None and frame.usage is not None:
        total = total + frame.usage
    return total


def check(
    *,
    model: str,
    provider: str | None = None,
    input_tokens: int,
    max_output_tokens: int | None,
) -> None:
    """Raise BudgetExceeded if a request of this size to `model` would go over the running
    execution's budget. Does nothing outside a flow or without a budget."""
    run = current_run.get()
    spend = _spend_of(run)
    if run is None or spend is None or spend.budget is None:
        return
    budget = spend.budget
    frame = current_frame.get()
    used = spent(run, frame)
    output_tokens = max_output_tokens or 0
    problem: str | None = None
    if budget.max_tokens is not None:
        needed = used.total_tokens + input_tokens + output_tokens
        if used.total_tokens >= budget.max_tokens or needed > budget.max_tokens:
            problem = (
                f"{used.total_tokens:,} tokens spent; the next request to {model} needs about "
                f"{input_tokens + output_tokens:,} more, over the limit of {budget.max_tokens:,}"
            )
    if problem is None and budget.max_cost_usd is not None:
        if not used.cost_complete:
            problem = (
                f"the cost of {used.unpriced_requests} model request(s) is unknown, so the limit "
                f"of ${budget.max_cost_usd:g} cannot be kept"
            )
        else:
            estimate = cost_of(
                model, provider, input_tokens=input_tokens, output_tokens=output_tokens
            )
            so_far = used.cost_usd or 0.0
            if estimate is None:
                problem = (
                    f"the price of {model} is unknown, so the limit of "
                    f"${budget.max_cost_usd:g} cannot be kept (give its price with "
                    f"tether.configure(prices={{{model!r}: tether.ModelPrice(...)}}))"
                )
            elif so_far >= budget.max_cost_usd or so_far + estimate > budget.max_cost_usd:
                problem = (
                    f"${so_far:.4f} spent; the next request to {model} costs about "
                    f"${estimate:.4f}, over the limit of ${budget.max_cost_usd:g}"
                )
    if problem is None:
        return
    where = frame.position if frame is not None else "..."
    raise BudgetExceeded(
        f"budget of execution {run.execution_id} ({budget}) reached: {problem}. The request was "
        "not made. To go on, replay the execution with a larger budget "
        f"(tether.Client().replay({run.execution_id!r}, from_={where}, "
        "budget=tether.Budget(...))), or start the flow with one: "
        "flow.options(budget=tether.Budget(...)).run(...)",
        spent_tokens=used.total_tokens,
        spent_cost_usd=used.cost_usd,
        max_tokens=budget.max_tokens,
        max_cost_usd=budget.max_cost_usd,
    )


def estimate_tokens(text_chars: int) -> int:
    """Tokens in text of this many characters, roughly (four characters a token, rounded up)."""
    return -(-text_chars // 4)
