"""Limits on what is stored: the size of a value and how deeply it is nested. A value over
a limit is refused where it is written, with a SerializationError that names it, the limit
and how to change it; nothing recorded before is lost or changed."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from typing import Any

import pytest

import tether
from helpers import child_env, retry_until
from tether import Status
from tether._core import config as _config
from tether._core import serde
from tether._memory import api as memory

SMALL_LIMIT = 4096
BIG = "x" * 10_000
NS = {"namespace": "limits"}


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    inner = value
    for _ in range(depth - 1):
        child: list[Any] = []
        inner.append(child)
        inner = child
    return value


@pytest.fixture
def small_limit(db_url: str) -> str:
    tether.configure(max_value_bytes=SMALL_LIMIT)
    return db_url


@tether.checkpoint
def small(n: int) -> dict[str, int]:
    return {"n": n}


@tether.checkpoint
def big(n: int) -> str:
    return BIG


@tether.checkpoint
def deep(n: int) -> list[Any]:
    return nested(n)


@tether.flow
def big_after_small() -> str:
    small(1)
    return big(2)


@tether.flow
async def gathered(depth: int) -> list[str]:
    # Two branches that really run concurrently; one's result is refused, the other's kept.
    async def one() -> Any:
        await asyncio.sleep(0)
        return small(1)

    async def other() -> Any:
        await asyncio.sleep(0)
        return deep(depth)

    results = await asyncio.gather(one(), other(), return_exceptions=True)
    return [type(r).__name__ for r in results]


@tether.flow
def deep_result(depth: int) -> list[Any]:
    small(1)
    return nested(depth)


@tether.flow
def echo(value: Any) -> Any:
    return small(1)


@tether.flow
def asks() -> Any:
    small(1)
    return tether.wait("data", schema=Any)


def test_a_result_over_the_size_limit_fails_its_checkpoint_and_keeps_what_was_recorded(
    client: tether.Client, small_limit: str
) -> None:
    handle = big_after_small.run()
    with pytest.raises(tether.ExecutionFailed):
        handle.result(timeout=10)
    record = client.get(handle.id)
    assert record.status is Status.FAILED
    assert record.error is not None and record.error.type == "tether.errors.SerializationError"
    message = record.error.message
    assert "result of checkpoint 'big'" in message
    assert "9.8 KiB" in message and "4.0 KiB limit" in message
    assert "max_value_bytes" in message and "TETHER_MAX_VALUE_BYTES" in message
    first, second = record.checkpoints
    assert (first.name, first.status, first.result) == ("small", "succeeded", {"n": 1})
    assert (second.name, second.status, second.result) == ("big", "failed", None)
    assert len(second.attempts) == 1, "the same code returns the same value: not retried"


def test_a_result_nested_too_deep_in_a_gathered_branch_is_refused_with_its_path(
    client: tether.Client,
) -> None:
    handle = gathered.run(900)
    assert handle.result(timeout=10) == ["dict", "SerializationError"]
    calls = {c.name: c for c in client.get(handle.id).checkpoints}
    assert calls["small"].result == {"n": 1}
    error = calls["deep"].error
    assert error is not None and error.type == "tether.errors.SerializationError"
    assert "result of checkpoint 'deep'[0][0]" in error.message
    assert "nested more than 100 containers deep" in error.message
    # The limit, not Python's recursion limit: 100 levels are stored and read back.
    handle = gathered.run(100)
    assert handle.result(timeout=10) == ["dict", "list"]
    calls = {c.name: c for c in client.get(handle.id).checkpoints}
    assert calls["deep"].result == nested(100)


def test_a_flow_result_nested_too_deep_fails_the_execution_with_its_path(
    client: tether.Client,
) -> None:
    handle = deep_result.run(900)
    with pytest.raises(tether.ExecutionFailed):
        handle.result(timeout=10)
    record = client.get(handle.id)
    assert record.error is not None and record.error.type == "tether.errors.SerializationError"
    assert "cannot store result of flow 'deep_result'[0][0]" in record.error.message
    assert "RecursionError" not in record.error.traceback
    assert [(c.name, c.result) for c in record.checkpoints] == [("small", {"n": 1})]


def test_flow_arguments_too_deep_or_too_big_are_refused_before_anything_is_recorded(
    client: tether.Client, small_limit: str
) -> None:
    with pytest.raises(tether.SerializationError) as deep_error:
        echo.run(nested(900))
    assert "arguments of flow 'echo'['args'][0][0]" in str(deep_error.value)
    assert "nested more than 100" in str(deep_error.value)
    with pytest.raises(tether.SerializationError) as big_error:
        echo.run(BIG)
    assert "arguments of flow 'echo'" in str(big_error.value)
    assert "limit on a stored value" in str(big_error.value)
    assert client.list() == []


def test_wait_input_over_a_limit_is_refused_and_the_wait_stays_pending(
    client: tether.Client, small_limit: str
) -> None:
    handle = asks.run()
    retry_until(lambda: handle.status() is Status.WAITING, what="the flow to wait")
    with pytest.raises(tether.SerializationError) as big_error:
        client.input(handle.id, "data", BIG)
    assert "input for wait 'data'" in str(big_error.value)
    with pytest.raises(tether.SerializationError) as deep_error:
        client.input(handle.id, "data", nested(900))
    assert "input for wait 'data'[0][0]" in str(deep_error.value)
    (pending,) = client.get(handle.id).pending_waits
    assert pending.name == "data"
    client.input(handle.id, "data", {"ok": True})
    assert handle.result(timeout=10) == {"ok": True}


def test_memory_values_over_a_limit_leave_the_key_as_it_was(small_limit: str) -> None:
    assert memory.set("notes", ["first"], **NS) == 1
    with pytest.raises(tether.SerializationError) as big_error:
        memory.set("notes", BIG, **NS)
    assert "value of memory key 'notes'" in str(big_error.value)
    # A list is stored item by item, but read back whole: the limit is on the list.
    with pytest.raises(tether.SerializationError):
        memory.set("notes", ["y" * 1000] * 8, **NS)
    with pytest.raises(tether.SerializationError) as deep_error:
        memory.set("notes", {"tree": nested(900)}, **NS)
    assert "value of memory key 'notes'['tree'][0]" in str(deep_error.value)
    assert memory.get("notes", **NS) == ["first"]
    assert memory.set("notes", ["first", "second"], **NS) == 2


def test_the_default_limit_is_16_mib_and_values_up_to_it_are_stored(db_url: str) -> None:
    assert _config.settings().max_value_bytes == 16 * 1024 * 1024
    just_under = "x" * (16 * 1024 * 1024 - 2)  # two quotes make it exactly the limit
    assert len(serde.dumps(just_under)) == 16 * 1024 * 1024
    with pytest.raises(tether.SerializationError, match=r"16\.0 MiB limit"):
        serde.dumps(just_under + "x", root="result")


@pytest.mark.parametrize("size", [0, 1023, 2**31, "16M", True])
def test_a_limit_out_of_range_is_a_configuration_error(db_url: str, size: Any) -> None:
    with pytest.raises(tether.ConfigurationError, match="max_value_bytes"):
        tether.configure(max_value_bytes=size)
    assert _config.settings().max_value_bytes == 16 * 1024 * 1024


def test_the_limit_comes_from_the_environment(db_url: str) -> None:
    code = (
        "import tether\n"
        "from tether._core import serde\n"
        "try:\n"
        "    serde.dumps('x' * 3000, root='result')\n"
        "except tether.SerializationError as exc:\n"
        "    print(exc)\n"
    )
    env = child_env(db_url, TETHER_MAX_VALUE_BYTES="2048")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert "over the 2.0 KiB limit" in done.stdout, done.stderr
    env["TETHER_MAX_VALUE_BYTES"] = "lots"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert "TETHER_MAX_VALUE_BYTES must be a whole number, not 'lots'" in done.stderr


def test_a_stored_row_nested_deeper_than_tether_writes_is_an_error_not_a_crash() -> None:
    crafted = "[" * 5000 + "]" * 5000
    with pytest.raises(tether.SerializationError, match="nested too deep to read"):
        serde.loads(crafted, root="result")
    tagged = '{"$t":"tuple","v":' * 2000 + "[]" + "}" * 2000
    with pytest.raises(tether.SerializationError, match="nested too deep to read"):
        serde.loads(tagged, root="result")


def test_the_deepest_rows_tether_writes_are_read_back() -> None:
    # A dict with int keys takes three JSON levels: 100 of them nested are 300, past what
    # pydantic_core reads, so the json module reads them, and its depth bound must let them by.
    value: Any = "leaf"
    for _ in range(serde.MAX_DEPTH):
        value = {1: value}
    assert serde.loads(serde.dumps(value)) == value


def mixed(levels: int) -> Any:
    value: Any = "leaf"
    for i in range(levels):
        value = (value,) if i % 3 == 0 else {"k": value} if i % 3 == 1 else {1: value}
    return value


def test_depth_counts_containers_of_every_kind() -> None:
    assert serde.loads(serde.dumps(mixed(100))) == mixed(100)
    with pytest.raises(tether.SerializationError, match="nested more than 100"):
        serde.dumps(mixed(101), root="value")


# --- what can be resumed ------------------------------------------------------------------


def test_a_lambda_flow_is_refused_at_decoration() -> None:
    with pytest.raises(tether.UsageError, match=r"lambda.*Define the flow with `def`"):
        tether.flow(lambda: None)
    with pytest.raises(tether.UsageError, match="cannot take a lambda"):
        tether.flow(name="named")(lambda: None)


def test_a_lambda_checkpoint_needs_a_name(client: tether.Client) -> None:
    with pytest.raises(tether.UsageError, match=r"needs a name, e\.g\. tether\.checkpoint\(name="):
        tether.checkpoint(lambda x: x)
    handle = uses_named_lambda.run(4)
    assert handle.result(timeout=10) == 8
    assert [c.name for c in client.get(handle.id).checkpoints] == ["twice"]


twice = tether.checkpoint(name="twice")(lambda x: x * 2)


@tether.flow
def uses_named_lambda(n: int) -> Any:
    return twice(n)


INTERACTIVE = (
    "import warnings, tether\n"
    "warnings.simplefilter('always')\n"
    "@tether.flow\n"
    "def typed_here() -> int:\n"
    "    return 1\n"
)


def test_a_flow_defined_at_an_interactive_prompt_warns_that_only_this_process_resumes_it(
    tmp_path: Any,
) -> None:
    env = child_env(f"sqlite:///{tmp_path / 'tether.db'}")
    # The REPL: python reads the session from stdin, and its __main__ has no file.
    repl = subprocess.run(
        [sys.executable, "-i"],
        input=INTERACTIVE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "flow 'typed_here' is defined in an interactive session" in repl.stderr
    assert "only this process can resume its executions" in repl.stderr
    # 3.13's REPL names each statement's code `<stdin>-N` (so tracebacks can show its lines);
    # earlier ones name them all `<stdin>`.
    assert re.search(r"<stdin>(-\d+)?:1: UserWarning", repl.stderr), (
        "the warning points at the user's code"
    )
    # `python -c` likewise, and the warning names the decorated line, with or without options.
    code = INTERACTIVE + "@tether.flow(name='named')\ndef other() -> int:\n    return 2\n"
    inline = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert "<string>:3: UserWarning: flow 'typed_here'" in inline.stderr, inline.stderr
    assert "<string>:6: UserWarning: flow 'named'" in inline.stderr, inline.stderr
    # A script file can be loaded again by another process: no warning.
    script = tmp_path / "agent.py"
    script.write_text(INTERACTIVE)
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "interactive session" not in done.stderr, done.stderr


# --- a refusal seen by flow code, live and resumed ----------------------------------------

ran: list[str] = []


@tether.checkpoint
def oversized(n: int) -> str:
    ran.append("oversized")
    return BIG


@tether.flow
def measure_child(text: str) -> int:
    return len(text)


@tether.flow
def tolerant() -> list[str]:
    seen = []
    try:
        oversized(1)
        seen.append("stored")
    except tether.SerializationError as exc:
        seen.append(f"refused at {exc.path}")
    try:
        measure_child(BIG)
        seen.append("child started")
    except tether.SerializationError as exc:
        seen.append(f"child refused at {exc.path}")
    tether.wait("go", schema=bool)
    return seen


def test_flow_code_that_catches_a_refusal_takes_the_same_path_when_resumed(
    client: tether.Client, small_limit: str
) -> None:
    ran.clear()
    handle = tolerant.run()
    retry_until(lambda: handle.status() is Status.WAITING, what="the flow to wait")
    client.input(handle.id, "go", True)  # resumes by replay from the top
    assert handle.result(timeout=10) == [
        "refused at result of checkpoint 'oversized'",
        "child refused at arguments of flow 'measure_child'",
    ]
    assert ran == ["oversized"], "the refused call's error was replayed, not run again"
    record = client.get(handle.id)
    assert record.children == () and [e.id for e in client.list()] == [handle.id]
