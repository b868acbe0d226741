"""tether.llm(): one model call, one checkpoint, on Pydantic AI's model layer. Offline: the
models are `FunctionModel`s and `TestModel`s."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

import tether
import usage_flows as uf
from helpers import SRC, TESTS, child_env, run_child


def _requests(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_outside_a_flow_it_just_calls_the_model() -> None:
    assert tether.llm("hello", model=uf.tiny) == "echo: hello"
    assert asyncio.run(tether.llm_async("hello", model=uf.tiny)) == "echo: hello"


def test_import_tether_does_not_import_pydantic_ai() -> None:
    code = "import sys, tether; assert 'pydantic_ai' not in sys.modules; tether.llm; "
    code += "assert 'pydantic_ai' in sys.modules"
    done = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_in_a_flow_each_call_is_one_checkpoint_with_the_output_as_json(db_url: str) -> None:
    handle = uf.three_questions.run("q")
    assert handle.result(timeout=30) == ["echo: q 0", "echo: q 1", "echo: q 2"]
    record = tether.Client().get(handle.id)
    assert [(c.name, c.result_json) for c in record.checkpoints] == [
        ("llm", '"echo: q 0"'),
        ("llm", '"echo: q 1"'),
        ("llm", '"echo: q 2"'),
    ]


def test_a_resumed_flow_gets_recorded_outputs_without_calling_the_model(
    db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "requests.log"
    start = "import usage_flows; print(usage_flows.three_questions.run('r').result(timeout=60))"
    crashed = run_child(start, db_url, MODEL_CALLS=str(log), MODEL_CRASH="3")
    assert crashed.returncode < 0, crashed.stderr
    (execution,) = tether.Client().list()
    assert len(tether.Client().get(execution.id).checkpoints) == 2
    resume = "import sys, tether; print(tether.Client().resume(sys.argv[1]).result(timeout=60))"
    resumed = run_child(
        resume, db_url, execution.id, MODEL_CALLS=str(log), TETHER_IMPORTS="usage_flows"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == str(["echo: r 0", "echo: r 1", "echo: r 2"])
    # The two recorded calls did not run again; the one killed in flight did.
    assert _requests(log) == ["r 0", "r 1", "r 2", "r 2"]
    # ...with the arguments they were recorded with.
    assert tether.Client().get(execution.id).warnings == []


def test_structured_output_is_validated_and_invalid_output_is_sent_back(db_url: str) -> None:
    calls: list[int] = []

    def judge(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append(1)
        tool = info.output_tools[0].name
        args: dict[str, Any] = {"answer": "ok", "score": "high" if len(calls) == 1 else 9}
        return ModelResponse(parts=[ToolCallPart(tool, args)], usage=uf.request_usage())

    _models["judge"] = FunctionModel(judge, model_name="tiny")
    tether.configure(prices={"tiny": uf.PRICE})
    handle = _judged.run()
    assert handle.result(timeout=30) == uf.Verdict(answer="ok", score=9)
    (call,) = tether.Client().get(handle.id).checkpoints
    assert call.result_json == '{"answer":"ok","score":9}'
    # The rejected answer was a request too: both are counted, in one call.
    assert call.usage is not None and call.usage.requests == 2 and len(calls) == 2


_models: dict[str, Any] = {}


@tether.flow
def _judged() -> uf.Verdict:
    return tether.llm("judge this", model=_models["judge"], output_type=uf.Verdict)


def test_a_replayed_structured_output_comes_back_as_its_type(db_url: str) -> None:
    source = uf.structured.run("good")
    assert source.result(timeout=30) == uf.Verdict(answer="good", score=7)
    fork = tether.Client().replay(source.id, from_=1)  # everything recorded is replayed
    assert fork.result(timeout=30) == uf.Verdict(answer="good", score=7)


def test_system_prompt_messages_settings_and_name_reach_the_model(db_url: str) -> None:
    seen: dict[str, Any] = {}

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen["instructions"] = info.instructions
        seen["settings"] = info.model_settings
        seen["messages"] = len(messages)
        return ModelResponse(parts=[TextPart("fine")])

    _models["seen"] = FunctionModel(model)
    handle = _configured.run()
    assert handle.result(timeout=30) == "fine"
    assert seen["instructions"] == "Be brief."
    assert seen["settings"]["temperature"] == 0.0 and seen["settings"]["max_tokens"] == 20
    assert seen["messages"] == 3  # the conversation passed in
    (call,) = tether.Client().get(handle.id).checkpoints
    assert call.name == "summarize"


@tether.flow
def _configured() -> str:
    history: list[ModelMessage] = [
        ModelRequest(parts=[UserPromptPart("hi")]),
        ModelResponse(parts=[TextPart("hello")]),
        ModelRequest(parts=[UserPromptPart("and now?")]),
    ]
    return tether.llm(
        history,
        model=_models["seen"],
        system="Be brief.",
        name="summarize",
        temperature=0.0,
        max_tokens=20,
    )


def test_async_calls_take_positions_in_the_order_they_are_made(db_url: str) -> None:
    handle = uf.async_questions.run("x")
    assert handle.result(timeout=30) == ["echo: x a", "echo: x b", "echo: x c"]
    calls = tether.Client().get(handle.id).checkpoints
    assert [c.result for c in calls] == ["echo: x a", "echo: x b", "echo: x c"]


def test_the_default_model_comes_from_tether_model(db_url: str) -> None:
    tether.configure(model="test")  # Pydantic AI's TestModel
    expected = tether.llm("hi")
    assert expected == tether.llm("hi", model=TestModel())
    code = "import tether; print(tether.llm('hi'))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(db_url, TETHER_MODEL="test"),
        capture_output=True,
        text=True,
        cwd=str(TESTS),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


# --- mistakes get typed errors that say what to do ------------------------------------------


def test_no_model_and_no_tether_model_is_a_usage_error(db_url: str) -> None:
    tether.configure(model=None)
    with pytest.raises(tether.UsageError, match=r"pass model=.*or set TETHER_MODEL"):
        tether.llm("hi")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: tether.llm("hi", model=uf.tiny, temprature=0.5), "unknown model settings"),
        (lambda: tether.llm(42, model=uf.tiny), "takes a prompt"),  # type: ignore[call-overload]
        (lambda: tether.llm([], model=uf.tiny), "no messages"),
        (lambda: tether.llm("hi", model=uf.tiny, name=""), "name is the checkpoint's name"),
        (lambda: tether.llm("hi", model=3), "model is a model name"),  # type: ignore[call-overload]
        (lambda: tether.llm("hi", model=uf.tiny, system=1), "system is the system prompt"),  # type: ignore[call-overload]
    ],
)
def test_bad_arguments_are_usage_errors(call: Any, message: str) -> None:
    with pytest.raises(tether.UsageError, match=message):
        call()


def test_provider_settings_pass_with_their_prefix() -> None:
    with pytest.raises(tether.UsageError, match=r"\(openai_\.\.\.\)"):
        tether.llm("hi", model="openai:gpt-4o", anthropic_thinking={})  # type: ignore[call-arg]


def test_the_sync_form_in_async_code_says_to_await_the_async_one() -> None:
    async def main() -> None:
        tether.llm("hi", model=uf.tiny)

    with pytest.raises(tether.UsageError, match=r"await tether\.llm_async"):
        asyncio.run(main())
