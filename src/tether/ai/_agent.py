"""durable(agent): an existing Pydantic AI agent, made durable inside tether flows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from pydantic_ai import AgentRun
from pydantic_ai.agent import AbstractAgent, WrapperAgent
from pydantic_ai.capabilities import AbstractCapability, ResolveModelId
from pydantic_ai.messages import UserContent
from pydantic_ai.models import Model, ModelResolutionContext
from pydantic_ai.output import OutputDataT
from pydantic_ai.tools import AgentDepsT

from tether._core import answers as _answers
from tether._core.context import current_run
from tether.errors import ControlSignal, UsageError

from ._durability import TetherDurability
from ._units import in_flow


class DurableAgent(WrapperAgent[AgentDepsT, OutputDataT]):
    """An agent that runs like the one it wraps, with its model requests and tool calls
    recorded as checkpoints when it runs inside a `@tether.flow`.

    `run`, `run_sync`, `iter`, `run_stream`, `run_stream_events` and `override` work as on the
    wrapped agent (they all go through `iter`). Each run gets the bound `TetherDurability`
    capability added to it; outside a flow that capability does nothing.
    """

    def __init__(
        self,
        wrapped: AbstractAgent[AgentDepsT, OutputDataT],
        durability: TetherDurability[AgentDepsT] | None = None,
    ) -> None:
        if isinstance(wrapped, DurableAgent):
            raise UsageError("this agent is durable already; configure it once")
        super().__init__(wrapped)
        attached = TetherDurability.from_agent(wrapped)
        if attached is not None:
            if durability is not None:
                raise UsageError(
                    "this agent was built with a TetherDurability capability already; "
                    "call durable(agent) without one"
                )
            self._durability: TetherDurability[AgentDepsT] = attached
            self._run_capability: AbstractCapability[AgentDepsT] | None = None
        else:
            capability = (durability or TetherDurability[AgentDepsT]()).for_agent(wrapped)
            self._durability = _bound_durability(capability)
            self._run_capability = capability

    @property
    def durability(self) -> TetherDurability[AgentDepsT]:
        """The bound capability this agent's runs use."""
        return self._durability

    @asynccontextmanager
    async def iter(
        self,
        user_prompt: str | Sequence[UserContent] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AgentRun[AgentDepsT, Any]]:
        if self._run_capability is not None:
            kwargs["capabilities"] = [*(kwargs.get("capabilities") or ()), self._run_capability]
        replacement = _replay_model()
        if replacement is not None:
            kwargs.update(_replay_selection(replacement, kwargs.get("capabilities")))
        try:
            async with self.wrapped.iter(user_prompt, **kwargs) as run:
                yield run
        except BaseExceptionGroup as group:
            # A wait or a cancellation unwinds the flow from inside the agent's task groups;
            # hand the flow the bare signal, which its engine knows how to treat.
            signal = _first_signal(group)
            if signal is None:
                raise
            raise signal from None

    def __repr__(self) -> str:
        return f"DurableAgent({self.wrapped!r})"


def _replay_model() -> Any:
    """The model a replay test (tether.testing) runs agents with instead of their own, when
    this is flow code of one of its cases."""
    run = current_run.get()
    if run is None or not _answers.installed or not in_flow():
        return None
    answers = _answers.of(run.store)
    return None if answers is None else answers.model


# The name a replay's model instance is selected by. Not a model name `infer_model` knows, so
# no other resolver builds a model for it.
_REPLAY_MODEL_ID = "tether-replay:model"


def _replay_selection(replacement: object, capabilities: Any) -> dict[str, Any]:
    """The `model=` and `capabilities=` of a run made with a replay test's model.

    Inside a flow the durable capability sends a request only to a model it can find again
    inside the checkpoint: the agent's own, one registered in its `models=`, or one selected
    by a name that the run's `resolve_model_id` chain resolves (Pydantic AI's documented
    escape hatch). A model instance is selected by a name of tether's here, which a
    `ResolveModelId` of this run resolves to it; the agent's capability stays untouched. A
    model name (`"openai:gpt-4o"`) is passed as is: Pydantic AI builds it, in the checkpoint
    too.
    """
    if not isinstance(replacement, Model):
        return {"model": replacement}

    def resolve(_ctx: ModelResolutionContext[Any], model_id: str) -> Model | None:
        return replacement if model_id == _REPLAY_MODEL_ID else None

    return {
        "model": _REPLAY_MODEL_ID,
        "capabilities": [*(capabilities or ()), ResolveModelId(resolve)],
    }


def _bound_durability(capability: AbstractCapability[AgentDepsT]) -> TetherDurability[AgentDepsT]:
    found: list[TetherDurability[AgentDepsT]] = []

    def visit(leaf: AbstractCapability[AgentDepsT]) -> None:
        if isinstance(leaf, TetherDurability):
            found.append(leaf)

    capability.apply(visit)
    assert len(found) == 1, f"expected one bound TetherDurability in {capability!r}"
    return found[0]


def _first_signal(group: BaseExceptionGroup[BaseException]) -> ControlSignal | None:
    for error in group.exceptions:
        if isinstance(error, ControlSignal):
            return error
        if isinstance(error, BaseExceptionGroup):
            found = _first_signal(error)
            if found is not None:
                return found
    return None


def durable(
    agent: AbstractAgent[AgentDepsT, OutputDataT],
    durability: TetherDurability[AgentDepsT] | None = None,
) -> DurableAgent[AgentDepsT, OutputDataT]:
    """Make a Pydantic AI agent durable inside `@tether.flow`s.

    ```python
    agent = tether.ai.durable(Agent("openai:gpt-4o", tools=[search, fetch]))

    @tether.flow
    async def research(topic: str) -> str:
        return (await agent.run(f"Research {topic}")).output
    ```

    Inside a flow every model request is a `model_request` checkpoint call and every tool call
    a `tool:<name>` one: after a crash, `Client().resume(id)` runs the flow again and the
    agent gets the recorded responses and results back without calling the model or the
    tools again. Tools that need approval make the flow wait for input (see
    `TetherDurability`). Outside a flow the returned agent behaves exactly like `agent`.

    Pass a configured `TetherDurability(...)` for checkpoint options (retries, timeouts).
    """
    if isinstance(agent, DurableAgent) and durability is None:
        return agent
    return DurableAgent(agent, durability)
