"""Flows that call models, for the usage, llm and budget tests (also run in child processes).

The models are Pydantic AI `FunctionModel`s named "tiny" that report a fixed usage per
request: 100 input tokens and 10 output tokens. At the price the tests configure for
"tiny" ($1 per million input tokens, $10 per million output tokens) a request costs
$0.0002. Every request that really runs appends `<label>` to the file named by $MODEL_CALLS
(fsynced); $MODEL_CRASH=<n> kills the process with SIGKILL inside the n-th request made in
this process, after logging it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading

from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

import tether
import tether.ai

PRICE = tether.ModelPrice(input_per_mtok=1.0, output_per_mtok=10.0)


def request_usage() -> RequestUsage:
    # A new one per response: Pydantic AI fills in the cost of the object it is handed.
    return RequestUsage(input_tokens=100, output_tokens=10)


REQUEST_COST = 0.0002

_made = 0
_lock = threading.Lock()


def log_request(label: str) -> None:
    global _made
    with _lock:
        _made += 1
        count = _made
    path = os.environ.get("MODEL_CALLS")
    if path:
        with open(path, "a") as f:
            f.write(label + "\n")
            f.flush()
            os.fsync(f.fileno())
    if os.environ.get("MODEL_CRASH") == str(count):
        os.kill(os.getpid(), signal.SIGKILL)


def _last_user_text(messages: list[ModelMessage]) -> str:
    for message in reversed(messages):
        for part in message.parts:
            content = getattr(part, "content", None)
            if isinstance(content, str) and part.part_kind == "user-prompt":
                return content
    return ""


def echo(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Answers `echo: <prompt>`, or calls the output tool for structured output."""
    prompt = _last_user_text(messages)
    log_request(prompt)
    if info.output_tools:
        return ModelResponse(
            parts=[ToolCallPart(info.output_tools[0].name, {"answer": prompt, "score": 7})],
            usage=request_usage(),
        )
    return ModelResponse(parts=[TextPart(f"echo: {prompt}")], usage=request_usage())


tiny = FunctionModel(echo, model_name="tiny")


class Verdict(BaseModel):
    answer: str
    score: int


# --- tether.llm in flows -----------------------------------------------------------------


@tether.flow
def three_questions(topic: str) -> list[str]:
    """Three model calls, one after the other."""
    return [tether.llm(f"{topic} {i}", model=tiny) for i in range(3)]


@tether.flow
def careful(topic: str) -> list[str]:
    """Model calls until the budget stops them; returns what it got (a partial result)."""
    answers: list[str] = []
    try:
        for i in range(10):
            answers.append(tether.llm(f"{topic} {i}", model=tiny))
    except tether.BudgetExceeded:
        answers.append("stopped by the budget")
    return answers


@tether.flow
def ten_questions(topic: str) -> list[str]:
    return [tether.llm(f"{topic} {i}", model=tiny) for i in range(10)]


@tether.flow
def capped_questions(topic: str) -> list[str]:
    """Each request may answer with up to 100 tokens: the budget counts them in advance."""
    return [tether.llm(f"{topic} {i}", model=tiny, max_tokens=100) for i in range(10)]


@tether.flow(budget=tether.Budget(max_tokens=300))
def budgeted_questions(topic: str) -> list[str]:
    return [tether.llm(f"{topic} {i}", model=tiny) for i in range(10)]


@tether.flow
async def async_questions(topic: str) -> list[str]:
    first = await tether.llm_async(f"{topic} a", model=tiny)
    rest = await asyncio.gather(
        tether.llm_async(f"{topic} b", model=tiny), tether.llm_async(f"{topic} c", model=tiny)
    )
    return [first, *rest]


@tether.flow
def structured(topic: str) -> Verdict:
    return tether.llm(topic, model=tiny, output_type=Verdict, system="Judge it.")


_attempts: dict[str, int] = {}


@tether.checkpoint(retries=3, backoff=0)
def flaky_step(label: str, failures: int) -> str:
    """Asks the model, then fails `failures` times before it succeeds: every attempt spent."""
    answer = tether.llm(label, model=tiny)
    attempt = tether.current().attempt or 1
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed after the model answered")
    return answer


@tether.flow
def retried(failures: int) -> str:
    return flaky_step("retried", failures)


@tether.checkpoint
def ask_then_fail(prompt: str) -> str:
    """Asks the model, then fails: a failed call that spent."""
    raise RuntimeError(f"failed after {tether.llm(prompt, model=tiny)}")


@tether.flow
def fails_after_asking() -> str:
    first = tether.llm("first", model=tiny)
    ask_then_fail("second")
    return first


@tether.checkpoint
def direct_call(prompt: str) -> str:
    """A provider called without Pydantic AI: the usage is recorded by hand."""
    tether.record_usage(model="tiny", input_tokens=40, output_tokens=4, cache_read_tokens=30)
    return prompt.upper()


@tether.flow
def by_hand(prompt: str) -> str:
    return direct_call(prompt)


# --- a durable agent -----------------------------------------------------------------------


def _agent_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Turn 1: call `lookup`. Turn 2: answer."""
    turns = sum(isinstance(m, ModelResponse) for m in messages)
    log_request(f"agent:{turns + 1}")
    if turns == 0:
        return ModelResponse(parts=[ToolCallPart("lookup", {"key": "a"})], usage=request_usage())
    return ModelResponse(parts=[TextPart("done")], usage=request_usage())


def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


agent = tether.ai.durable(
    Agent(FunctionModel(_agent_model, model_name="tiny"), name="agent", tools=[lookup]),
    # Retries would not help a request the budget stopped: it is not retried.
    tether.ai.TetherDurability(model_checkpoint={"retries": 3, "backoff": 0}),
)


@tether.flow
async def agent_flow(prompt: str) -> str:
    return (await agent.run(prompt)).output


@tether.flow
async def agent_twice(prompt: str) -> list[str]:
    first = (await agent.run(prompt)).output
    try:
        second = (await agent.run(prompt + " again")).output
    except tether.BudgetExceeded as exc:
        second = f"stopped: {type(exc).__name__}"
    return [first, second]
