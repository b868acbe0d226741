"""Usage and budgets for model requests made through Pydantic AI.

Two places see a live model request: the durable agent's `model_request` unit (its body only
runs live, never on replay) and `tether.llm`'s model (a `WrapperModel`, so validation retries
are requests that count too). Both check the budget before the request and add the
response's usage, priced, to the checkpoint call running it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import TypeAdapter
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import RequestUsage

from tether._core.context import current_frame
from tether._spend import budget as _budget
from tether._spend import usage as _usage
from tether._spend.prices import configured_price, cost_of

_request_usage: TypeAdapter[RequestUsage] = TypeAdapter(RequestUsage)


def usage_of(
    usage: RequestUsage,
    model: str,
    provider: str | None,
    provider_url: str | None = None,
    requested: str | None = None,
    *,
    counted: bool = True,
) -> _usage.Usage:
    """One response's usage, with its cost: a configured price, else the provider-reported
    cost, else genai-prices; None (unknown) when the response carried no usage.

    `requested` is the model name the request asked for, when the response names another
    (`gpt-4o` answered as `gpt-4o-2024-08-06`): a price configured for it applies.

    `counted=False`: a request that continues a response (see `RequestSteps`) adds its
    tokens and cost but no request; an unknown cost still makes the total incomplete.
    """
    cost: float | None = None
    if not usage.unmeasured_requests:
        counts = {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        }
        priced_as = model
        if (
            requested
            and configured_price(model, provider) is None
            and configured_price(requested, provider) is not None
        ):
            priced_as = requested
        if usage.cost is not None and configured_price(priced_as, provider) is None:
            cost = float(usage.cost)
        else:
            cost = cost_of(priced_as, provider, usage=usage, provider_url=provider_url, **counts)
    spent = _usage.of_request(
        model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cost_usd=cost,
    )
    if counted:
        return spent
    part = dataclasses.replace(spent.by_model[model], requests=0)
    return dataclasses.replace(part, by_model={model: part})


def record_response(response: ModelResponse, model: str | None, provider: str | None) -> None:
    """Add a live response's usage to the checkpoint call running it."""
    if current_frame.get() is None:
        return  # outside a flow: nothing to record it in
    name = response.model_name or model or "unknown"
    _usage.add(
        usage_of(
            response.usage,
            name,
            response.provider_name or provider,
            response.provider_url,
            requested=model,
        )
    )


def record_payload(payload: object, model: str | None, *, counted: bool = True) -> None:
    """`record_response` for a response already encoded as JSON (a durable unit's result):
    only its usage and names are decoded."""
    if current_frame.get() is None or not isinstance(payload, dict):
        return
    raw = payload.get("usage")
    if not isinstance(raw, dict):
        return
    usage = _request_usage.validate_python(raw)
    name = payload.get("model_name") or model or "unknown"
    provider, url = payload.get("provider_name"), payload.get("provider_url")
    _usage.add(usage_of(usage, name, provider, url, requested=model, counted=counted))


# --- the budget check ------------------------------------------------------------------


def check_budget(
    model: str,
    provider: str | None,
    messages: Sequence[ModelMessage],
    settings: ModelSettings | None,
    parameters: ModelRequestParameters | None,
) -> None:
    """Raise BudgetExceeded if this request would go over the running execution's budget."""
    if not _budget.active():
        return
    chars = _message_chars(messages) + _tool_chars(parameters)
    max_tokens = (settings or {}).get("max_tokens")
    _budget.check(
        model=model,
        provider=provider,
        input_tokens=_budget.estimate_tokens(chars),
        max_output_tokens=max_tokens if isinstance(max_tokens, int) else None,
    )


def _message_chars(messages: Sequence[ModelMessage]) -> int:
    chars = 0
    for message in messages:
        if isinstance(message, ModelRequest) and message.instructions:
            chars += len(message.instructions)
        for part in message.parts:
            chars += _part_chars(part)
    return chars


def _part_chars(part: Any) -> int:
    args_as_json = getattr(part, "args_as_json_str", None)
    if callable(args_as_json):  # a tool call
        return len(part.tool_name) + len(args_as_json())
    response_str = getattr(part, "model_response_str", None)
    if callable(response_str):  # a tool return
        return len(response_str())
    content = getattr(part, "content", None)
    if isinstance(content, str):
        return len(content)
    if content is None:
        return 0
    if isinstance(content, Sequence):
        return sum(len(item) if isinstance(item, str) else 0 for item in content)
    return len(str(content))


def _tool_chars(parameters: ModelRequestParameters | None) -> int:
    if parameters is None:
        return 0
    chars = 0
    for tool in (*parameters.function_tools, *parameters.output_tools):
        chars += len(tool.name) + len(tool.description or "")
        chars += len(json.dumps(tool.parameters_json_schema))
    return chars


# --- the two places -----------------------------------------------------------------


class RequestSteps:
    """Which model requests count as requests, as Pydantic AI's `RunUsage.requests` counts
    them: once per step of the agent loop (per response committed to the run's history).

    A provider-paused turn (Anthropic `pause_turn`, OpenAI background mode) is completed by
    more model requests in the same step, each its own `model_request` checkpoint call and
    each billed, but Pydantic AI counts the merged response once. So only the first request
    of a step counts; the others add tokens and cost only. Decided in flow code, for replayed
    requests too, so a resumed flow counts as the uninterrupted one did.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counted: dict[str, int] = {}  # scope (one agent run) -> the step last counted

    def counts(self, scope: str, run_step: int) -> bool:
        """Whether the request about to be made in this step is the step's counted one."""
        with self._lock:
            return self._counted.get(scope) != run_step

    def made(self, scope: str, run_step: int) -> None:
        """A request of this step returned (live or replayed): the step is counted."""
        with self._lock:
            self._counted[scope] = run_step

    def forget(self, scope: str) -> None:
        with self._lock:
            self._counted.pop(scope, None)


def metered_unit(
    body: Callable[[], Awaitable[object]],
    model: str | None,
    cache_key: tuple[object, ...],
    *,
    counted: bool = True,
) -> Callable[[], Awaitable[object]]:
    """A durable `model_request` unit's body, checked against the budget and metered
    (`counted=False`: with no request, see `RequestSteps`)."""

    async def run() -> object:
        if _budget.active():
            messages = next((v for v in cache_key if isinstance(v, list)), [])
            settings = next((v for v in cache_key if isinstance(v, dict)), None)
            parameters = next((v for v in cache_key if isinstance(v, ModelRequestParameters)), None)
            check_budget(model or "unknown", None, messages, settings, parameters)  # type: ignore[arg-type]
        payload = await body()
        record_payload(payload, model, counted=counted)
        return payload

    return run


class MeteredModel(WrapperModel):
    """A model whose every request is checked against the budget and metered (tether.llm)."""

    def __init__(self, wrapped: Model | str) -> None:
        super().__init__(wrapped)

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        model = self.wrapped.model_name
        provider = self.wrapped.system
        check_budget(model, provider, messages, model_settings, model_request_parameters)
        response = await super().request(messages, model_settings, model_request_parameters)
        record_response(response, model, provider)
        return response
