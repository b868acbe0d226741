"""Model usage: tokens, requests and cost, recorded with the checkpoint call that spent them.

While a checkpoint call runs, each model call made in it adds its usage to the running
`Frame` (`add()`); the call's commit stores the sum in the row's metadata JSON under one
reserved key (`KEY`), on `retrying` rows too, so the spend of failed attempts survives a
crash. A replayed call runs nothing and adds nothing, so nothing is counted twice; an
execution's total is the sum over its rows. This module owns the encoding, so that it can
become a column later without touching anything else.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._core.context import current_frame, current_run
from ..errors import UsageError
from ..store import EventRow
from .prices import cost_of

# The reserved metadata key. A dot keeps it out of reach of `tether.log(**metadata)`.
KEY = "tether.usage"
# `Client.retry()` forgets the calls from the failed one on; what they spent is kept in the
# data of its `retry` event, under KEY, so totals still count it.
RETRY_EVENT = "retry"


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens, requests and cost of model calls: of one checkpoint call
    (`CheckpointRecord.usage`) or of a whole execution (`ExecutionRecord.usage`).

    `input_tokens` includes the cached tokens (`cache_read_tokens`, `cache_write_tokens`),
    as Pydantic AI counts them. `cost_usd` sums the costs that are known; it is None when no
    request's cost is known, and a lower bound when `unpriced_requests` is above 0 (see
    `cost_complete`). `by_model` breaks the totals down per model name.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    requests: int = 0
    cost_usd: float | None = None
    unpriced_requests: int = 0
    by_model: Mapping[str, Usage] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    @property
    def cost_complete(self) -> bool:
        """True when the cost of every request is known (so `cost_usd` is the whole cost)."""
        return self.unpriced_requests == 0

    def __bool__(self) -> bool:
        return bool(self.requests or self.total_tokens)

    def __add__(self, other: Usage) -> Usage:
        by_model: Mapping[str, Usage] = self.by_model
        if other.by_model:
            merged = dict(self.by_model)
            for name, part in other.by_model.items():
                mine = merged.get(name)
                merged[name] = part if mine is None else mine + part
            by_model = merged
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            requests=self.requests + other.requests,
            cost_usd=_add_cost(self.cost_usd, other.cost_usd),
            unpriced_requests=self.unpriced_requests + other.unpriced_requests,
            by_model=by_model,
        )


def _add_cost(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    # Rounded to a millionth of a cent, far below any price: sums of float costs then read
    # as the same figure however they were added up.
    return a if b is None else round(a + b, 8)


def of_request(
    model: str,
    *,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    requests: int = 1,
    cost_usd: float | None = None,
) -> Usage:
    """The usage of `requests` model requests to `model` (one entry in `by_model`)."""
    unpriced = requests if cost_usd is None else 0
    part = Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read_tokens,
        cache_write_tokens=cache_write_tokens,
        requests=requests,
        cost_usd=cost_usd,
        unpriced_requests=unpriced,
    )
    return dataclasses.replace(part, by_model={model: part})


# --- recording ------------------------------------------------------------------------


def add(usage: Usage) -> None:
    """Add usage to the checkpoint call running now. Nothing is recorded when none runs
    (outside a flow, or in flow code between checkpoints)."""
    frame = current_frame.get()
    if frame is not None:
        frame.usage = usage if frame.usage is None else frame.usage + usage


def record_usage(
    *,
    model: str,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    requests: int = 1,
    cost_usd: float | None = None,
    provider: str | None = None,
) -> None:
    """Record the usage of a model call made without Pydantic AI (a provider SDK called
    directly), in the checkpoint call that made it.

    ```python
    @tether.checkpoint
    def ask(prompt: str) -> str:
        reply = client.messages.create(model="claude-sonnet-4-5", ...)
        tether.record_usage(
            model="claude-sonnet-4-5",
            provider="anthropic",
            input_tokens=reply.usage.input_tokens,
            output_tokens=reply.usage.output_tokens,
        )
        return reply.content[0].text
    ```

    `input_tokens` includes cached tokens (`cache_read_tokens`, `cache_write_tokens`). Without
    `cost_usd`, the cost comes from a price given with `tether.configure(prices=...)`, else
    from genai-prices (when installed), else it stays unknown (None). Outside a flow this does
    nothing. In flow code outside a checkpoint it raises UsageError: flow code runs again on
    resume, so usage recorded there would be counted twice.
    """
    run = current_run.get()
    if run is None:
        return
    for label, value in (
        ("input_tokens", input_tokens),
        ("output_tokens", output_tokens),
        ("cache_read_tokens", cache_read_tokens),
        ("cache_write_tokens", cache_write_tokens),
        ("requests", requests),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"{label} is a whole number, 0 or more, not {value!r}")
    if not isinstance(model, str) or not model:
        raise UsageError(f"model is the model's name, a non-empty string, not {model!r}")
    if cost_usd is not None and (isinstance(cost_usd, bool) or not cost_usd >= 0):
        raise UsageError(f"cost_usd is a number of dollars, 0 or more, not {cost_usd!r}")
    if current_frame.get() is None:
        raise UsageError(
            "tether.record_usage() was called in flow code outside a checkpoint; call it inside "
            "the @tether.checkpoint that made the model call, so that the usage is recorded with "
            "its result and a resumed flow does not count it twice"
        )
    if cost_usd is None:
        cost_usd = cost_of(
            model,
            provider,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read_tokens,
            cache_write_tokens=cache_write_tokens,
        )
    add(
        of_request(
            model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read_tokens,
            cache_write_tokens=cache_write_tokens,
            requests=requests,
            cost_usd=cost_usd,
        )
    )


# --- the stored form ---------------------------------------------------------------------


def encode(usage: Usage) -> dict[str, Any]:
    """Usage as plain JSON data (for the row's metadata)."""
    data = _encode_flat(usage)
    if usage.by_model:
        data["by_model"] = {name: _encode_flat(part) for name, part in usage.by_model.items()}
    return data


def _encode_flat(usage: Usage) -> dict[str, Any]:
    data: dict[str, Any] = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "requests": usage.requests,
        "cost_usd": usage.cost_usd,
    }
    # Zeros are left out: most calls use no cache, and every byte is written per call.
    if usage.cache_read_tokens:
        data["cache_read_tokens"] = usage.cache_read_tokens
    if usage.cache_write_tokens:
        data["cache_write_tokens"] = usage.cache_write_tokens
    if usage.unpriced_requests:
        data["unpriced_requests"] = usage.unpriced_requests
    return data


def decode(data: Mapping[str, Any]) -> Usage:
    by_model = data.get("by_model") or {}
    return Usage(
        input_tokens=int(data.get("input_tokens", 0)),
        output_tokens=int(data.get("output_tokens", 0)),
        cache_read_tokens=int(data.get("cache_read_tokens", 0)),
        cache_write_tokens=int(data.get("cache_write_tokens", 0)),
        requests=int(data.get("requests", 0)),
        cost_usd=None if data.get("cost_usd") is None else float(data["cost_usd"]),
        unpriced_requests=int(data.get("unpriced_requests", 0)),
        by_model={name: decode(part) for name, part in by_model.items()},
    )


def with_usage(metadata: Mapping[str, Any], usage: Usage) -> dict[str, Any]:
    """Row metadata with the usage put under its key."""
    return {**metadata, KEY: encode(usage)}


def split(metadata: Mapping[str, Any]) -> tuple[dict[str, Any], Usage | None]:
    """Decoded row metadata -> (the user's metadata, the usage recorded with the call)."""
    if KEY not in metadata:
        return dict(metadata), None
    rest = dict(metadata)
    return rest, decode(rest.pop(KEY))


def from_metadata(text: str | None) -> Usage | None:
    """The usage in a row's metadata text, or None. Rows without usage are not decoded."""
    if not text or KEY not in text:
        return None
    data = json.loads(text).get(KEY)
    return decode(data) if isinstance(data, Mapping) else None


def without_usage(text: str | None) -> str | None:
    """Row metadata text without the usage (for copies of calls another execution paid for)."""
    if not text or KEY not in text:
        return text
    data = json.loads(text)
    data.pop(KEY, None)
    return json.dumps(data) if data else None


def forgotten(events: Iterable[EventRow]) -> Usage:
    """What the calls a `Client.retry()` forgot had spent: kept in its `retry` events' data."""
    return total(from_metadata(e.data) for e in events if e.kind == RETRY_EVENT)


def total(usages: Iterable[Usage | None]) -> Usage:
    result = Usage()
    for usage in usages:
        if usage is not None:
            result = result + usage
    return result
