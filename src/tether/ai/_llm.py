"""tether.llm(): one model call, recorded as one checkpoint call, on Pydantic AI's model layer.

Every provider Pydantic AI supports works, by the same model names (`"openai:gpt-4o"`,
`"anthropic:claude-sonnet-4-5"`, ...) or `Model` instances. The call runs a small Pydantic AI
agent with no tools, so a structured `output_type` gets Pydantic AI's output handling:
invalid output is sent back to the model, and those extra requests are counted in the
usage like any other. The recorded result is the output as JSON, validated back into
`output_type` live and on replay alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar, Unpack, cast, overload

from pydantic import TypeAdapter
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ModelRequest, ModelResponse
from pydantic_ai.models import Model
from pydantic_ai.settings import ModelSettings

import tether
from tether._core.config import settings as tether_settings
from tether.errors import UsageError

from ._metering import MeteredModel
from ._units import CheckpointCache, Slot, _stable, in_flow, unit_checkpoint

T = TypeVar("T")

_SETTING_KEYS = frozenset(ModelSettings.__annotations__)
_adapters: dict[Any, TypeAdapter[Any]] = {}


def _adapter(output_type: Any) -> TypeAdapter[Any]:
    try:
        found = _adapters.get(output_type)
    except TypeError:  # an unhashable type form: not cached
        return TypeAdapter(output_type)
    if found is None:
        found = _adapters[output_type] = TypeAdapter(output_type)
    return found


class _Request:
    """One tether.llm call's inputs, checked; the body runs the model."""

    def __init__(
        self,
        prompt_or_messages: str | Sequence[ModelMessage],
        model: Model | str | None,
        system: str | None,
        output_type: Any,
        name: str | None,
        model_settings: dict[str, Any],
    ) -> None:
        if model is None:
            model = tether_settings().model
            if model is None:
                raise UsageError(
                    "tether.llm() needs a model: pass model='openai:gpt-4o' (any model name "
                    "Pydantic AI knows, or a Model instance), or set TETHER_MODEL "
                    "(or tether.configure(model=...))"
                )
        if not isinstance(model, str | Model) or model == "":
            raise UsageError(f"model is a model name or a pydantic_ai Model, not {model!r}")
        if isinstance(prompt_or_messages, str):
            self.messages: list[ModelMessage] | None = None
        elif isinstance(prompt_or_messages, Sequence) and all(
            isinstance(m, ModelRequest | ModelResponse) for m in prompt_or_messages
        ):
            if not prompt_or_messages:
                raise UsageError("tether.llm() was given no messages; pass a prompt or messages")
            self.messages = list(cast(Sequence[ModelMessage], prompt_or_messages))
        else:
            raise UsageError(
                "tether.llm() takes a prompt (a str) or a list of pydantic_ai ModelMessages, "
                f"not {type(prompt_or_messages).__name__}"
            )
        if system is not None and not isinstance(system, str):
            raise UsageError(f"system is the system prompt, a str, not {system!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise UsageError(f"name is the checkpoint's name, a non-empty string, not {name!r}")
        self.model = model
        self.model_label = model if isinstance(model, str) else f"{model.system}:{model.model_name}"
        _check_settings(model_settings, self.model_label)
        self.prompt = prompt_or_messages if isinstance(prompt_or_messages, str) else None
        self.system = system
        self.output_type = output_type
        try:
            self.adapter = _adapter(output_type)
        except Exception as exc:
            raise UsageError(
                f"output_type {output_type!r} is not a type Pydantic can validate: {exc}"
            ) from exc
        self.name = name or "llm"
        self.settings = model_settings

    def key(self) -> str:
        """What the call's argument check compares on resume (timestamps left out)."""
        if self.messages is not None:
            dumped = ModelMessagesTypeAdapter.dump_python(self.messages, mode="json")
            prompt: Any = _stable(dumped)
        else:
            prompt = self.prompt
        text = json.dumps(
            [
                self.model_label,
                self.system,
                getattr(self.output_type, "__qualname__", repr(self.output_type)),
                self.settings,
                prompt,
            ],
            sort_keys=True,
            default=str,
        )
        return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()

    def _agent(self) -> Agent[None, Any]:
        return Agent(
            MeteredModel(self.model),
            output_type=self.output_type,
            instructions=self.system,
            model_settings=cast(ModelSettings, self.settings) if self.settings else None,
        )

    async def body(self) -> object:
        agent = self._agent()
        if self.messages is None:
            result = await agent.run(self.prompt)
        else:
            result = await agent.run(message_history=self.messages)
        return self.adapter.dump_python(result.output, mode="json")

    def body_sync(self) -> object:
        # Pydantic AI's own sync entry point: it keeps one event loop per thread, so model
        # clients cached across calls stay usable.
        agent = self._agent()
        if self.messages is None:
            result = agent.run_sync(self.prompt)
        else:
            result = agent.run_sync(message_history=self.messages)
        return self.adapter.dump_python(result.output, mode="json")


def _check_settings(model_settings: dict[str, Any], model: str) -> None:
    provider = model.split(":", 1)[0].split("-", 1)[0] + "_" if ":" in model else None
    unknown = [
        key
        for key in model_settings
        if key not in _SETTING_KEYS and not (provider and key.startswith(provider))
    ]
    if unknown:
        raise UsageError(
            f"tether.llm() got unknown model settings {sorted(unknown)}; it takes Pydantic AI's "
            f"ModelSettings ({', '.join(sorted(_SETTING_KEYS))}) and settings of the model's "
            f"provider named with its prefix ({provider or '<provider>_'}...)"
        )


# --- the checkpoints: async (shared with the agent units) and sync --------------------------


class _SyncSlot:
    """Carries a sync body into its checkpoint call (fingerprinted by type name, like Slot)."""

    __slots__ = ("body",)

    def __init__(self, body: Callable[[], object]) -> None:
        self.body = body


def _run_sync_unit(key: object, slot: _SyncSlot) -> object:
    return slot.body()


_sync_checkpoints: CheckpointCache[str, tether.Checkpoint[[object, _SyncSlot], object]] = (
    CheckpointCache()
)


def _sync_checkpoint(name: str) -> tether.Checkpoint[[object, _SyncSlot], object]:
    return _sync_checkpoints.get(name, lambda: tether.checkpoint(name=name)(_run_sync_unit))


@overload
def llm(
    prompt_or_messages: str | Sequence[ModelMessage],
    *,
    model: Model | str | None = None,
    system: str | None = None,
    name: str | None = None,
    **settings: Unpack[ModelSettings],
) -> str: ...


@overload
def llm(
    prompt_or_messages: str | Sequence[ModelMessage],
    *,
    model: Model | str | None = None,
    system: str | None = None,
    output_type: type[T],
    name: str | None = None,
    **settings: Unpack[ModelSettings],
) -> T: ...


def llm(
    prompt_or_messages: str | Sequence[ModelMessage],
    *,
    model: Model | str | None = None,
    system: str | None = None,
    output_type: Any = str,
    name: str | None = None,
    **settings: Any,
) -> Any:
    """One model call; inside a flow, one checkpoint call whose result is recorded.

    ```python
    @tether.flow(budget=tether.Budget(max_cost_usd=1.0))
    def triage(ticket: str) -> Verdict:
        summary = tether.llm(f"Summarize: {ticket}", model="openai:gpt-4o-mini")
        return tether.llm(summary, system="Classify the ticket.", output_type=Verdict)
    ```

    - `prompt_or_messages`: a prompt, or a conversation as Pydantic AI `ModelMessage`s.
    - `model`: a Pydantic AI model name (`"anthropic:claude-sonnet-4-5"`) or `Model`
      instance; default: `TETHER_MODEL` (or `tether.configure(model=...)`).
    - `system`: the system prompt (instructions).
    - `output_type`: `str`, or any type Pydantic validates (a model, a dataclass, `list[int]`
      ...): the model is asked for it, and invalid output is sent back to it to fix.
    - `name`: the checkpoint's name (default `"llm"`).
    - `**settings`: Pydantic AI model settings: `temperature=`, `max_tokens=`, ... (and the
      provider's own, by their prefix, e.g. `openai_reasoning_effort=`).

    Inside a flow the call is recorded like a checkpoint: after a crash it returns the
    recorded output without calling the model; its tokens and cost are recorded with it
    and count against the flow's `Budget` (`BudgetExceeded` before a request that would go
    over). Outside a flow it just calls the model. In async code use `tether.llm_async`.
    """
    request = _Request(prompt_or_messages, model, system, output_type, name, settings)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise UsageError(
            "tether.llm() was called in async code (an event loop is running); "
            "use `await tether.llm_async(...)` there"
        )
    if not in_flow():
        data = request.body_sync()
    else:
        data = _sync_checkpoint(request.name)(request.key(), _SyncSlot(request.body_sync))
    return request.adapter.validate_python(data)


@overload
def llm_async(
    prompt_or_messages: str | Sequence[ModelMessage],
    *,
    model: Model | str | None = None,
    system: str | None = None,
    name: str | None = None,
    **settings: Unpack[ModelSettings],
) -> Coroutine[Any, Any, str]: ...


@overload
def llm_async(
    prompt_or_messages: str | Sequence[ModelMessage],
    *,
    model: Model | str | None = None,
    system: str | None = None,
    output_type: type[T],
    name: str | None = None,
    **settings: Unpack[ModelSettings],
) -> Coroutine[Any, Any, T]: ...


def llm_async(
    prompt_or_messages: str | Sequence[ModelMessage],
    *,
    model: Model | str | None = None,
    system: str | None = None,
    output_type: Any = str,
    name: str | None = None,
    **settings: Any,
) -> Coroutine[Any, Any, Any]:
    """The async form of `tether.llm()`: same arguments, same recording.

    Like an async checkpoint, the call takes its position when it is made, not when it is
    awaited, so `asyncio.gather(tether.llm_async(a), tether.llm_async(b))` records `a` first.
    """
    request = _Request(prompt_or_messages, model, system, output_type, name, settings)
    if not in_flow():
        return _validated(request, request.body())
    return _validated(request, unit_checkpoint(request.name, {})(request.key(), Slot(request.body)))


async def _validated(request: _Request, call: Coroutine[Any, Any, object]) -> Any:
    return request.adapter.validate_python(await call)
