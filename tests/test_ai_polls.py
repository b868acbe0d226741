"""The waits between polls of a model's background job (an OpenAI background response, a
batch), inside a flow: short ones stay in the process with their wake-up time recorded, long
ones suspend the execution; neither is waited again when the flow is resumed by replay.

Pydantic AI routes those waits to `durable_sleep` from 2.78 on; on older releases (the floor
run) they are plain in-process sleeps, and only the first test applies.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.durable_exec import BaseDurabilityCapability, DurabilityEngineSpec
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import tether
import tether.ai
from helpers import FakeClock, retry_until
from tether import Status
from tether.errors import Cancelled, LeaseLost, Released, Suspended

has_durable_sleep = pytest.mark.skipif(
    not hasattr(BaseDurabilityCapability, "durable_sleep"),
    reason="this Pydantic AI waits between polls without asking the engine (before 2.78)",
)


class BackgroundModel(FunctionModel):
    """Answers through a background job: the first request starts it (a suspended response
    carrying the job's id), the next one polls it and gets the answer. `calls` and `cancelled`
    say what really reached the provider."""

    def __init__(self, name: str, delay: float) -> None:
        super().__init__(self._respond, model_name=name)
        self.delay = delay
        self.calls: list[str] = []
        self.cancelled: list[str | None] = []

    def _respond(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1]
        if isinstance(last, ModelResponse) and last.state == "suspended":
            self.calls.append("poll")
            return ModelResponse(parts=[TextPart("done")], provider_response_id="job-1")
        self.calls.append("start")
        return ModelResponse(parts=[], state="suspended", provider_response_id="job-1")

    def continuation_delay(self, response: ModelResponse) -> float | None:
        return self.delay if response.state == "suspended" else None

    async def cancel_suspended_response(self, response: ModelResponse) -> None:
        self.cancelled.append(response.provider_response_id)


quick = BackgroundModel("quick", 0)
hour_long = BackgroundModel("hour_long", 3600)
hour_inline = BackgroundModel("hour_inline", 3600)
slow_job = BackgroundModel("slow_job", 900)

quick_agent = tether.ai.durable(Agent(quick, name="quick"))
# The default keeps waits of up to 30 s in the process: an hour suspends.
suspending_agent = tether.ai.durable(Agent(hour_long, name="suspending"))
inline_agent = tether.ai.durable(
    Agent(hour_inline, name="inline"), tether.ai.TetherDurability(inline_poll_wait=7200)
)

direct_agent = tether.ai.durable(
    Agent(FunctionModel(lambda m, i: ModelResponse(parts=[TextPart("direct")])), name="direct")
)
polling_agent = tether.ai.durable(Agent(slow_job, name="polling"))


@tether.flow
async def ask_quick(prompt: str) -> str:
    return (await quick_agent.run(prompt)).output


@tether.flow
async def ask_suspending(prompt: str) -> str:
    return (await suspending_agent.run(prompt)).output


@tether.flow
async def ask_inline_then_wait(prompt: str) -> str:
    answer = (await inline_agent.run(prompt)).output
    return f"{answer} {tether.wait('go', schema=str)}"


@tether.flow
async def ask_both(prompt: str) -> list[str]:
    async def ask(agent: Any) -> str:
        return str((await agent.run(prompt)).output)

    return list(await asyncio.gather(ask(direct_agent), ask(polling_agent)))


@pytest.fixture(autouse=True)
def _reset() -> None:
    for model in (quick, hour_long, hour_inline, slow_job):
        model.calls.clear()
        model.cancelled.clear()


def _names(client: tether.Client, execution_id: str) -> list[str]:
    return [call.name for call in client.get(execution_id).checkpoints]


def _poll_wait(client: tether.Client, execution_id: str) -> Any:
    calls = [c for c in client.get(execution_id).checkpoints if c.name == "poll_wait"]
    return calls[0] if calls else None


def test_a_background_job_polled_in_a_flow_gives_its_answer(client: tether.Client) -> None:
    handle = ask_quick.run("go")
    assert handle.result(timeout=30) == "done"
    assert quick.calls == ["start", "poll"]
    assert quick.cancelled == []
    # Each poll is a model request of its own; a wait of no time is not recorded.
    assert _names(client, handle.id) == ["agent_run", "model_request", "model_request"]


def test_tethers_suspending_signals_are_control_flow_for_pydantic_ai() -> None:
    spec = tether.ai.TetherDurability.engine_spec
    if "control_flow_error_types" not in DurabilityEngineSpec.__dataclass_fields__:
        pytest.skip("this Pydantic AI has no control_flow_error_types (before 2.78)")
    listed = spec.control_flow_error_types
    assert set(listed) == {Suspended, Released, LeaseLost}
    # A cancelled execution is not run again: the job it polled is cancelled, not left.
    assert not issubclass(Cancelled, listed)


@has_durable_sleep
def test_a_long_wait_between_polls_suspends_and_is_not_waited_again(
    client: tether.Client, clock: FakeClock
) -> None:
    handle = ask_suspending.run("go")
    retry_until(lambda: client.get(handle.id).status is Status.WAITING, what="the flow to sleep")
    record = client.get(handle.id)
    assert record.wake_at is not None
    assert record.wake_at.timestamp() == pytest.approx(clock.now + 3600)
    assert [w.kind for w in record.waits] == ["sleep"]
    assert hour_long.calls == ["start"]
    # The suspension is control flow: the job is left running for the resumed flow to poll.
    assert hour_long.cancelled == []

    clock.advance(3600)
    assert handle.result(timeout=30) == "done"
    # Resumed by replay: the job's start came back recorded, and the due sleep passed at once.
    assert hour_long.calls == ["start", "poll"]
    assert hour_long.cancelled == []
    assert _names(client, handle.id) == ["agent_run", "model_request", "model_request"]


@has_durable_sleep
def test_a_short_wait_between_polls_stays_in_the_process_and_is_not_waited_again(
    client: tether.Client, clock: FakeClock
) -> None:
    handle = ask_inline_then_wait.run("go")
    recorded = retry_until(lambda: _poll_wait(client, handle.id), what="the poll wait recorded")
    assert recorded.result == pytest.approx(clock.now + 3600)  # its wake-up time
    assert client.get(handle.id).status is Status.RUNNING  # waiting in the process
    clock.advance(3600)  # the wait follows the configured clock
    retry_until(lambda: client.get(handle.id).status is Status.WAITING, what="the input wait")
    assert hour_inline.calls == ["start", "poll"]

    # Resumed by replay after the input (as after a crash). The clock stands still from here:
    # waiting the hour afresh would never end, so the result comes only if the recorded
    # wake-up time is kept.
    client.input(handle.id, "go", "now")
    assert handle.result(timeout=30) == "done now"
    assert hour_inline.calls == ["start", "poll"]
    assert hour_inline.cancelled == []
    assert _names(client, handle.id) == [
        "agent_run",
        "model_request",
        "poll_wait",
        "model_request",
    ]
    wait_call = _poll_wait(client, handle.id)
    assert len(wait_call.attempts) == 1


@has_durable_sleep
def test_an_agent_polling_beside_a_gathered_one_suspends_the_flow_and_resumes_in_its_branch(
    client: tether.Client, clock: FakeClock
) -> None:
    handle = ask_both.run("go")
    retry_until(lambda: client.get(handle.id).status is Status.WAITING, what="the flow to sleep")
    (sleep,) = client.get(handle.id).waits
    assert (sleep.kind, sleep.position.split(".")[0]) == ("sleep", "1")  # the second branch's
    assert slow_job.calls == ["start"]
    clock.advance(900)
    assert handle.result(timeout=30) == ["direct", "done"]
    assert slow_job.calls == ["start", "poll"]
    assert slow_job.cancelled == []
    polled = [c.name for c in client.get(handle.id).checkpoints if c.position.startswith("1.")]
    assert polled == ["agent_run", "model_request", "model_request"]


def test_a_negative_inline_poll_wait_is_a_usage_error() -> None:
    with pytest.raises(tether.UsageError, match="inline_poll_wait must be 0 or more"):
        tether.ai.TetherDurability(inline_poll_wait=-1)
