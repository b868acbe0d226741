"""`tether mcp`: the MCP server, driven by the official SDK's client over stdio against a
real `tether mcp` subprocess, with real processes running the executions it operates."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

import tether
from helpers import (
    TESTS,
    child_env,
    killed_mid_checkpoint,
    plant,
    retry_until,
    run_child,
    run_cli,
    run_python,
    spawn_python,
)

READ_TOOLS = {
    "list_executions",
    "get_execution",
    "read_logs",
    "list_pending_waits",
    "read_memory",
    "list_schedules",
}
OPERATE_TOOLS = {
    "give_input",
    "cancel_execution",
    "resume_execution",
    "retry_execution",
    "replay_execution",
    "pause_schedule",
    "resume_schedule",
}


@asynccontextmanager
async def mcp_session(db_url: str, mode: str, **env: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "tether", "mcp", "--mode", mode, "--db", db_url],
        env=child_env(db_url, **env),
        cwd=str(TESTS),
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def call_error(session: ClientSession, tool: str, **arguments: Any) -> str:
    result = await session.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return " ".join(getattr(block, "text", "") for block in result.content)


def _started_and_gone(db_url: str, flow: str, arg: str, until: str) -> str:
    """Start `flow(arg)` in a process that exits once the execution is `until`; its id."""
    done = run_child(
        textwrap.dedent(
            f"""
            import time, mcp_flows
            handle = mcp_flows.{flow}.run({arg!r})
            while handle.status() != {until!r}:
                time.sleep(0.01)
            print(handle.id)
            """
        ),
        db_url,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def worker_procs() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


async def test_read_mode_offers_no_tool_that_changes_anything(db_url: str) -> None:
    tether.Client(db_url).list()  # the store exists
    async with mcp_session(db_url, "read") as session:
        tools = (await session.list_tools()).tools
    assert {t.name for t in tools} == READ_TOOLS
    assert all(t.annotations is not None and t.annotations.read_only_hint for t in tools)
    assert all(t.description and len(t.description) > 80 for t in tools)


async def test_operate_mode_adds_the_operating_tools(db_url: str) -> None:
    tether.Client(db_url).list()
    async with mcp_session(db_url, "operate") as session:
        tools = (await session.list_tools()).tools
    assert {t.name for t in tools} == READ_TOOLS | OPERATE_TOOLS
    schema = next(t for t in tools if t.name == "give_input").input_schema
    assert set(schema["required"]) == {"execution_id", "value"}


async def test_operate_gives_input_and_a_worker_continues_the_execution(
    db_url: str, worker_procs: list[subprocess.Popen[str]]
) -> None:
    # The process that started it is gone: the input must say that nobody will pick it up.
    execution_id = _started_and_gone(db_url, "approval", "tides", "waiting")
    async with mcp_session(db_url, "operate") as session:
        waits = (await call(session, "list_pending_waits"))["waits"]
        assert [(w["execution_id"], w["name"]) for w in waits] == [(execution_id, "approve")]
        assert waits[0]["json_schema"] == {"type": "boolean"}
        given = await call(session, "give_input", execution_id=execution_id[:12], value=True)
    assert given["wait"]["status"] == "resolved" and given["wait"]["resolved_by"] == "mcp"
    assert given["continues"]["live"] is False
    assert "tether worker" in given["continues"]["message"]
    assert "gone" in given["continues"]["message"]
    worker = spawn_python(
        ["-m", "tether", "worker", "--import", "mcp_flows", "--poll", "0.01"],
        db_url,
        stderr=subprocess.PIPE,
    )
    worker_procs.append(worker)
    client = tether.Client(db_url)
    retry_until(lambda: client.get(execution_id).status.finished, what="the worker to finish it")
    assert client.get(execution_id).result == "published draft on tides"


async def test_input_to_an_execution_whose_process_lives_continues_there(db_url: str) -> None:
    starter = spawn_python(
        [
            "-c",
            "import mcp_flows\nhandle = mcp_flows.approval.run('moons')\n"
            "print(handle.id, flush=True)\nprint(handle.result(), flush=True)",
        ],
        db_url,
    )
    try:
        assert starter.stdout is not None
        execution_id = starter.stdout.readline().strip()
        client = tether.Client(db_url)
        retry_until(lambda: client.get(execution_id).status == "waiting", what="the wait")
        async with mcp_session(db_url, "operate") as session:
            given = await call(session, "give_input", execution_id=execution_id, value=False)
        assert given["continues"]["live"] is True, given["continues"]
        out, _ = starter.communicate(timeout=30)
        assert out.strip() == "rejected"
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.communicate(timeout=10)


async def test_mistakes_come_back_as_tool_errors_that_say_what_to_do(db_url: str) -> None:
    execution_id = _started_and_gone(db_url, "approval", "tides", "waiting")
    async with mcp_session(db_url, "operate") as session:
        unknown = await call_error(session, "get_execution", execution_id="no-such-id")
        invalid = await call_error(
            session, "give_input", execution_id=execution_id, value={"yes": 1}
        )
        wrong_wait = await call_error(
            session, "give_input", execution_id=execution_id, value=True, wait="publish"
        )
        retry = await call_error(session, "retry_execution", execution_id=execution_id)
    assert "ExecutionNotFound" in unknown and "no-such-id" in unknown
    assert "InputValidationError" in invalid and "approve" in invalid
    assert "WaitNotFound" in wrong_wait and "'approve'" in wrong_wait
    assert "InvalidStateError" in retry and "only a failed execution" in retry
    # Nothing was recorded by the refused input.
    assert tether.Client(db_url).get(execution_id).pending_waits[0].status == "pending"


async def test_stored_values_are_data_and_the_server_imports_nothing(
    db_url: str, tmp_path: Path
) -> None:
    execution_id = _started_and_gone(db_url, "reporting", "tides", "succeeded")
    mark = tmp_path / "imported"
    async with mcp_session(db_url, "read", IMPORT_MARK=str(mark)) as session:
        record = await call(session, "get_execution", execution_id=execution_id)
        listed = await call(session, "list_executions", status=["succeeded"])
        logs = await call(session, "read_logs", execution_id=execution_id)
    assert record["result"] == {
        "type_name": "mcp_flows:Report",
        "data": {"title": "tides", "pages": 3},
        "kind": "dataclass",
    }
    assert [c["name"] for c in record["checkpoints"]] == ["write_report"]
    # The record as `--json` prints it: one set of views for every surface.
    printed = run_cli(db_url, "executions", "get", execution_id, "--json")
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout) == record
    assert [e["id"] for e in listed["executions"]] == [execution_id]
    assert [line["message"].strip() for line in logs["logs"]] == ["writing tides"]
    assert not mark.exists()


async def test_a_killed_execution_is_flagged_resumed_and_replayed_for_the_workers(
    db_url: str, tmp_path: Path, worker_procs: list[subprocess.Popen[str]]
) -> None:
    gate = tmp_path / "gate"
    execution_id = killed_mid_checkpoint(db_url, gate, steps=2)
    client = tether.Client(db_url)
    async with mcp_session(db_url, "operate") as session:
        record = await call(session, "get_execution", execution_id=execution_id)
        assert record["status"] == "running" and "is gone" in record["attention"]
        resumed = await call(session, "resume_execution", execution_id=execution_id)
    assert resumed["status"] == "queued" and "attention" not in resumed
    gate.write_text("open\n")
    worker_procs.append(
        spawn_python(
            ["-m", "tether", "worker", "--import", "approval_flows", "--poll", "0.01"],
            db_url,
            stderr=subprocess.PIPE,
            GATE_FILE=str(gate),
        )
    )
    retry_until(lambda: client.get(execution_id).status == "succeeded", what="the worker")
    async with mcp_session(db_url, "operate") as session:
        fork = await call(
            session, "replay_execution", execution_id=execution_id[:10], from_step="slow_step#2"
        )
    # The worker (still running) may have taken it already.
    assert fork["replay_of"] == execution_id
    assert fork["status"] in ("queued", "running", "succeeded")
    retry_until(lambda: client.get(fork["id"]).status == "succeeded", what="the fork to run")
    assert client.get(fork["id"]).result == 1


async def test_imported_modules_change_no_value_shown_and_print_aside(
    db_url: str, tmp_path: Path
) -> None:
    execution_id = _started_and_gone(db_url, "reporting", "tides", "succeeded")
    mark = tmp_path / "imported"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "tether", "mcp", "--import", "mcp_flows", "--db", db_url],
        env=child_env(db_url, IMPORT_MARK=str(mark)),
        cwd=str(TESTS),
    )
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            record = await call(session, "get_execution", execution_id=execution_id)
    assert mark.exists()
    # The class is loaded, yet the value reads as it does everywhere: data with its type.
    assert record["result"] == {
        "type_name": "mcp_flows:Report",
        "data": {"title": "tides", "pages": 3},
        "kind": "dataclass",
    }
    # What the module printed went to stderr: stdout carries the protocol.
    assert "mcp_flows imported" in errors.read_text()


def test_mcp_without_the_sdk_says_how_to_install_it(db_url: str) -> None:
    tether.Client(db_url).list()
    code = (
        "import sys\nsys.modules['mcp'] = None\nfrom tether.cli import main\n"
        f"sys.exit(main(['mcp', '--db', {db_url!r}]))"
    )
    done = run_python(["-c", code], db_url)
    assert done.returncode == 2, done.stderr
    assert "pip install -e '.[mcp]'" in done.stderr


async def test_schedules_are_listed_and_paused_and_resumed_in_operate_mode(db_url: str) -> None:
    from tether.store import ScheduleRow

    client = tether.Client(db_url)
    client._store.ensure_schedule(ScheduleRow("nightly", "0 3 * * *", False, 0.0, 10_800.0, 0.0))
    async with mcp_session(db_url, "read") as session:
        listed = await call(session, "list_schedules")
        refused = await session.call_tool("pause_schedule", {"name": "nightly"})
    assert listed == {
        "schedules": [
            {
                "name": "nightly", "spec": "0 3 * * *", "paused": False,
                "last_tick": "1970-01-01T00:00:00+00:00", "next_tick": "1970-01-01T03:00:00+00:00",
            }
        ]
    }  # fmt: skip
    assert refused.is_error and not client.schedules()[0].paused
    async with mcp_session(db_url, "operate") as session:
        paused = await call(session, "pause_schedule", name="nightly")
        assert paused["paused"] is True and client.schedules()[0].paused
        shown = await call(session, "list_schedules")
        assert shown["schedules"][0]["paused"] is True
        resumed = await call(session, "resume_schedule", name="nightly")
        missing = await call_error(session, "pause_schedule", name="daily")
    assert resumed["paused"] is False and not client.schedules()[0].paused
    assert "ScheduleNotFound" in missing and "schedules: nightly" in missing


async def test_list_executions_filters_by_queue_and_id_prefix_and_pages(db_url: str) -> None:
    client = tether.Client(db_url)
    plant(
        client,
        **{
            "abc-1": {"flow": "alpha", "status": "queued", "queue": "default"},
            "abc-2": {"flow": "alpha", "status": "succeeded", "queue": "fast"},
            "abd-3": {"flow": "beta", "status": "failed", "queue": "fast"},
            "xyz-4": {"flow": "beta", "status": "queued", "queue": "fast"},
        },
    )

    async def ids(**filters: Any) -> list[str]:
        found = await call(session, "list_executions", **filters)
        return [e["id"] for e in found["executions"]]

    async with mcp_session(db_url, "read") as session:
        assert await ids(queue="fast") == ["xyz-4", "abd-3", "abc-2"]
        assert await ids(id_prefix="ab") == ["abd-3", "abc-2", "abc-1"]
        assert await ids(id_prefix="abc", queue="fast") == ["abc-2"]
        assert await ids(id_prefix="ab", status=["queued"]) == ["abc-1"]
        assert await ids(queue="slow") == []
        first = await call(session, "list_executions", queue="fast", limit=2)
        assert [e["id"] for e in first["executions"]] == ["xyz-4", "abd-3"]
        assert await ids(queue="fast", limit=2, cursor=first["next"]) == ["abc-2"]
        last = await call(session, "list_executions", queue="fast", limit=2, cursor=first["next"])
        assert last["next"] is None
        bad = await call_error(session, "list_executions", cursor="not-a-cursor")
    assert "cursor" in bad
