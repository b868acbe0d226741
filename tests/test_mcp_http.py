"""MCP over streamable HTTP at `/mcp` of `tether server`: the official SDK's client against a
real uvicorn server (a `tether server` subprocess on a free loopback port), with a real
`tether worker` running the executions; the tools are those `tether mcp` serves over stdio,
chosen by the API token's scope."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

import mcp_flows
import tether
from helpers import retry_until, spawn_python
from server_procs import Processes, free_port, wait_until_serving
from test_mcp import OPERATE_TOOLS, READ_TOOLS, call, call_error

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture
def procs(db_url: str, tmp_path: Path) -> Iterator[Processes]:
    pool = Processes(db_url, tmp_path, "mcp_flows")
    yield pool
    pool.kill_all()
    for log in tmp_path.glob("server-*.log"):
        assert "Traceback" not in log.read_text(), log.read_text()


@asynccontextmanager
async def http_session(url: str, token: str | None = None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def tool_names(url: str, token: str | None = None) -> set[str]:
    async with http_session(url, token) as session:
        return {t.name for t in (await session.list_tools()).tools}


def _initialize(url: str, **headers: str) -> httpx.Response:
    """The opening request of an MCP session, as raw HTTP (to see refusals' status codes)."""
    message: dict[str, Any] = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream"}
    return httpx.post(f"{url}/mcp", json=message, headers={**accept, **headers}, timeout=120)


async def test_a_tokens_scope_chooses_the_tools_and_no_token_is_refused(
    client: tether.Client, procs: Processes
) -> None:
    read = client.create_token("assistant-read", "read")
    operate = client.create_token("assistant-operate", "operate")
    admin = client.create_token("assistant-admin", "admin")
    url = procs.server()
    assert await tool_names(url, read) == READ_TOOLS
    assert await tool_names(url, operate) == READ_TOOLS | OPERATE_TOOLS
    assert await tool_names(url, admin) == READ_TOOLS | OPERATE_TOOLS

    refused = _initialize(url)
    assert refused.status_code == 401, refused.text
    assert refused.headers["www-authenticate"] == "Bearer"
    assert "tether tokens create" in refused.json()["error"]["message"]
    assert _initialize(url, Authorization="Bearer tether_nope").status_code == 401
    client.revoke_token("assistant-operate")
    assert _initialize(url, Authorization=f"Bearer {operate}").status_code == 401
    assert _initialize(url, Authorization=f"Bearer {read}").status_code == 200


async def test_an_operate_token_gives_input_and_a_worker_continues_the_execution(
    client: tether.Client, procs: Processes
) -> None:
    read = client.create_token("watcher", "read")
    operate = client.create_token("release-bot", "operate")
    handle = mcp_flows.approval.enqueue("tides")
    url = procs.server()
    procs.worker()
    retry_until(lambda: client.get(handle.id).status == "waiting", what="the wait")

    async with http_session(url, read) as session:
        waits = (await call(session, "list_pending_waits"))["waits"]
        assert [(w["execution_id"], w["name"]) for w in waits] == [(handle.id, "approve")]
        # A read token is never offered the tool, and calling it by name does nothing.
        refused = await call_error(session, "give_input", execution_id=handle.id, value=True)
        assert "give_input" in refused
    assert client.get(handle.id).status == "waiting"

    async with http_session(url, operate) as session:
        given = await call(session, "give_input", execution_id=handle.id[:12], value=True)
    assert given["wait"]["status"] == "resolved"
    assert given["wait"]["resolved_by"] == "release-bot"  # the token's name, not "mcp"
    retry_until(lambda: client.get(handle.id).status.finished, what="the worker to finish it")
    assert client.get(handle.id).result == "published draft on tides"
    assert client.get(handle.id).waits[0].resolved_by == "release-bot"


async def test_without_tokens_loopback_gets_the_servers_mcp_mode(
    client: tether.Client, procs: Processes
) -> None:
    client.list()  # the store exists
    assert await tool_names(procs.server()) == READ_TOOLS  # read by default
    operating = procs.server("--mcp-mode", "operate")
    assert await tool_names(operating) == READ_TOOLS | OPERATE_TOOLS
    # A page of another site that a DNS rebinding points at 127.0.0.1 names itself.
    rebound = _initialize(operating, Host="attacker.example:8787")
    assert rebound.status_code == 403, rebound.text
    elsewhere = _initialize(operating, Origin="https://attacker.example")
    assert elsewhere.status_code == 403, elsewhere.text
    assert _initialize(operating, Origin="http://localhost:8787").status_code == 200
    # Once a token exists, the mode no longer applies: every client needs one.
    client.create_token("late", "read")
    assert _initialize(operating).status_code == 401


def test_without_the_sdk_mcp_says_how_to_install_it_and_the_rest_serves(
    client: tether.Client, db_url: str
) -> None:
    client.list()
    port = free_port()
    code = (
        "import sys\nsys.modules['mcp'] = None\nfrom tether.cli import main\n"
        f"sys.exit(main(['server', '--port', '{port}']))"
    )
    server = spawn_python(["-c", code], db_url, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(server, url, lambda: server.communicate()[0])
        missing = _initialize(url)
        assert missing.status_code == 501, missing.text
        assert "pip install -e '.[mcp]'" in missing.json()["error"]["message"]
        assert httpx.get(f"{url}/api/v1/executions").status_code == 200
    finally:
        server.kill()
        server.communicate(timeout=10)
