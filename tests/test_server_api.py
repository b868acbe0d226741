"""The HTTP API of `tether server`, through a real uvicorn server in a subprocess on a free
loopback port, driven with httpx; flows it starts are run by a real `tether worker`."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import server_flows
import tether
from helpers import child_env, plant, retry_until, run_cli
from server_flows import Report
from server_procs import Processes, free_port
from tether._core import serde
from tether._ops.outlines import Outline, Outlines
from tether._spend.usage import Usage
from tether.store import ExecutionRow

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture
def procs(db_url: str, tmp_path: Path) -> Iterator[Processes]:
    pool = Processes(db_url, tmp_path, "server_flows")
    yield pool
    pool.kill_all()


@pytest.fixture
def tokens(client: tether.Client) -> dict[str, str]:
    return {scope: client.create_token(f"{scope}-bot", scope) for scope in ("read", "operate")}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind, error
    assert error["message"]
    return dict(error)


def _finished(http: httpx.Client, execution_id: str, status: str = "succeeded") -> Any:
    def done() -> Any:
        shown = http.get(f"/api/v1/executions/{execution_id}").json()
        return shown if shown["status"] in ("succeeded", "failed", "cancelled") else None

    shown = retry_until(done, timeout=60, what=f"execution {execution_id} to finish")
    assert shown["status"] == status, shown
    return shown


# --- auth -------------------------------------------------------------------------------------


def test_without_tokens_loopback_is_served_and_other_hosts_are_refused(
    db_url: str, procs: Processes
) -> None:
    url = procs.server()
    assert httpx.get(f"{url}/api/v1/executions").json() == {"items": [], "next": None}
    handle = server_flows.approval.run("local")  # runs here, in the test process
    retry_until(lambda: handle.status() == tether.Status.WAITING, what="the wait")
    path = f"{url}/api/v1/executions/{handle.id}/waits/approve"
    given = httpx.post(path, json={"value": False})
    assert given.status_code == 200, given.text
    assert given.json()["resolved_by"] == "local"  # no token: who gave it is "local"
    assert handle.result(timeout=30) == "rejected"
    # A page of another site that a DNS rebinding points at 127.0.0.1 names itself.
    rebound = httpx.get(f"{url}/api/v1/executions", headers={"Host": "attacker.example:80"})
    assert "DNS rebinding" in _error(rebound, 403, "Forbidden")["message"]
    elsewhere = httpx.get(f"{url}/api/v1/waits", headers={"Origin": "http://attacker.example"})
    _error(elsewhere, 403, "Forbidden")
    local = httpx.get(f"{url}/api/v1/waits", headers={"Origin": "http://localhost:8787"})
    assert local.status_code == 200
    refused = run_cli(db_url, "server", "--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode != 0
    assert "refusing to listen on 0.0.0.0" in refused.stderr
    assert "tether tokens create" in refused.stderr


def test_what_another_site_can_make_a_browser_post_is_refused_while_no_token_exists(
    client: tether.Client, procs: Processes
) -> None:
    url = procs.server()
    handle = server_flows.approval.run("csrf")  # runs here, in the test process
    retry_until(lambda: handle.status() == tether.Status.WAITING, what="the wait")
    cancel = f"/api/v1/executions/{handle.id}/cancel"
    # What a page on any site can have its visitor's browser send with no CORS preflight:
    # an HTML form (urlencoded, multipart, text/plain) or a no-cors fetch of an untyped body.
    cross_site = [
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {"Content-Type": "text/plain;charset=UTF-8"},
        {},
    ]
    posts = [
        (cancel, b"x=1"),
        (f"/api/v1/executions/{handle.id}/waits/approve", b'{"value": true}'),
        ("/api/v1/flows/greeting/executions", b'{"args": ["csrf"]}'),
    ]
    with httpx.Client(base_url=url) as http:
        for kind in cross_site:
            headers = {**kind, "Origin": "https://elsewhere.example"}
            for path, body in posts:
                refused = http.post(path, content=body, headers=headers)
                error = _error(refused, 415, "UnsupportedMediaType")
                assert "Content-Type: application/json" in error["message"]
            put = http.put("/api/v1/memory/namespace/n/k", content=b'{"value": 1}', headers=headers)
            _error(put, 415, "UnsupportedMediaType")
        # Nothing changed: no input, no cancel, no new execution, no memory.
        assert client.get(handle.id).status is tether.Status.WAITING
        assert [r.id for r in client.list()] == [handle.id]
        _error(http.get("/api/v1/memory/namespace/n/k"), 404, "MemoryKeyError")
        # The same requests as JSON (what only a client, or a page of this server, sends).
        json_type = {"Content-Type": "application/json; charset=utf-8"}
        assert http.post(cancel, content=b"", headers=json_type).status_code == 200
    assert client.get(handle.id).status is tether.Status.CANCELLED


def test_tokens_are_required_scoped_and_revocable(
    client: tether.Client, procs: Processes, tokens: dict[str, str]
) -> None:
    url = procs.server()
    queued = server_flows.approval.enqueue("auth")
    with httpx.Client(base_url=url) as http:
        # A token exists: loopback alone is not enough any more.
        _error(http.get("/api/v1/executions"), 401, "Unauthorized")
        _error(http.get("/metrics"), 401, "Unauthorized")
        _error(http.get("/api/v1/executions", headers=_auth("tether_nope")), 401, "Unauthorized")
        _error(
            http.get("/api/v1/executions", headers={"Authorization": "Basic x"}),
            401,
            "Unauthorized",
        )
        assert http.get("/healthz").status_code == 200
        read = _auth(tokens["read"])
        assert http.get(f"/api/v1/executions/{queued.id}", headers=read).status_code == 200
        # A read token changes nothing.
        for path, body in [
            (f"/api/v1/executions/{queued.id}/cancel", {}),
            (f"/api/v1/executions/{queued.id}/resume", {}),
            ("/api/v1/flows/greeting/executions", {"args": ["x"]}),
        ]:
            error = _error(http.post(path, json=body, headers=read), 403, "Forbidden")
            assert "operate" in error["message"]
        forbidden = http.put("/api/v1/memory/namespace/n/k", json={"value": 1}, headers=read)
        _error(forbidden, 403, "Forbidden")
        assert client.get(queued.id).status == tether.Status.QUEUED
        # Revoked: refused from then on.
        operate = _auth(tokens["operate"])
        assert http.get("/api/v1/waits", headers=operate).status_code == 200
        client.revoke_token("operate-bot")
        _error(http.get("/api/v1/waits", headers=operate), 401, "Unauthorized")
    listed = {t.name: t for t in client.tokens()}
    assert listed["operate-bot"].revoked_at is not None and listed["read-bot"].active


def test_server_without_the_extra_says_which_install_line_brings_it(
    db_url: str, tmp_path: Path
) -> None:
    shadow = tmp_path / "shadow" / "fastapi"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'fastapi'\", name='fastapi')\n"
    )
    path = os.pathsep.join([str(shadow.parent), child_env(db_url)["PYTHONPATH"]])
    refused = run_cli(db_url, "server", "--port", str(free_port()), PYTHONPATH=path)
    assert refused.returncode == 2, refused.stderr
    assert "pip install -e '.[server]'" in refused.stderr and "fastapi" in refused.stderr


def test_tokens_cli_prints_once_and_stores_only_a_hash(db_url: str, client: tether.Client) -> None:
    created = run_cli(db_url, "tokens", "create", "--name", "ci", "--scope", "operate")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("tether_") and len(secret) > 40
    info = client.authenticate(secret)
    assert info is not None and (info.name, info.scope) == ("ci", "operate")
    again = run_cli(db_url, "tokens", "create", "--name", "ci")
    assert again.returncode == 2 and "exists already" in again.stderr
    bad = run_cli(db_url, "tokens", "create", "--name", "x", "--scope", "root")
    assert bad.returncode == 2 and "read, operate, admin" in bad.stderr
    listed = run_cli(db_url, "tokens", "list", "--json")
    assert json.loads(listed.stdout)[0]["name"] == "ci" and secret not in listed.stdout
    assert run_cli(db_url, "tokens", "revoke", "ci").returncode == 0
    assert client.authenticate(secret) is None
    missing = run_cli(db_url, "tokens", "revoke", "ci")
    assert missing.returncode == 2 and "no active token named 'ci'" in missing.stderr


# --- waits, started flows, a worker -----------------------------------------------------------


def test_flow_started_over_http_waits_gets_input_over_http_and_a_worker_finishes_it(
    procs: Processes, tokens: dict[str, str]
) -> None:
    url = procs.server()
    procs.worker()
    operate = _auth(tokens["operate"])
    with httpx.Client(base_url=url, headers=operate) as http:
        started = http.post(
            "/api/v1/flows/approval/executions", json={"args": ["launch"], "key": "k-1"}
        )
        assert started.status_code == 201, started.text
        execution_id = started.json()["id"]
        # The same key gives the same execution.
        again = http.post(
            "/api/v1/flows/approval/executions", json={"args": ["other"], "key": "k-1"}
        )
        assert again.json()["id"] == execution_id

        def pending() -> Any:
            items = http.get("/api/v1/waits").json()["items"]
            return [w for w in items if w["execution_id"] == execution_id]

        (wait,) = retry_until(pending, timeout=60, what="the approval wait")
        assert wait["name"] == "approve" and wait["json_schema"] == {"type": "boolean"}
        assert wait["question"] == "publish 'hello launch'?"
        path = f"/api/v1/executions/{execution_id}/waits/approve"
        read = _auth(tokens["read"])
        _error(http.post(path, json={"value": True}, headers=read), 403, "Forbidden")
        invalid = _error(http.post(path, json={"value": {"a": 1}}), 422, "InputValidationError")
        assert invalid["errors"]
        _error(http.post(path, json={}), 422, "RequestValidationError")
        nan = http.post(
            path, content=b'{"value": NaN}', headers={"Content-Type": "application/json"}
        )
        _error(nan, 422, "InputValidationError")
        _error(
            http.post(path, content=b"{", headers={"Content-Type": "application/json"}),
            422,
            "RequestValidationError",
        )
        _error(
            http.post(f"/api/v1/executions/{execution_id}/waits/nope", json={"value": True}),
            404,
            "WaitNotFound",
        )
        _error(
            http.post("/api/v1/executions/nope/waits/approve", json={"value": True}),
            404,
            "ExecutionNotFound",
        )
        given = http.post(path, json={"value": True})
        assert given.status_code == 200, given.text
        assert given.json()["resolved_by"] == "operate-bot" and given.json()["value"] is True
        # Already answered (or, if the worker was quick, already finished): a conflict.
        second = http.post(path, json={"value": False})
        assert second.status_code == 409, second.text
        assert second.json()["error"]["type"] in ("WaitAlreadyResolved", "InvalidStateError")
        done = _finished(http, execution_id)
        assert done["result"] == "published hello launch"
        (shown_wait,) = done["waits"]
        assert shown_wait["resolved_by"] == "operate-bot"
        _error(http.post(path, json={"value": False}), 409, "InvalidStateError")


def test_a_webhook_sends_before_the_wait_and_the_flow_takes_it(
    procs: Processes, client: tether.Client
) -> None:
    url = procs.server()
    handle = server_flows.approval.enqueue("early")  # queued: nobody runs it yet
    path = f"/api/v1/executions/{handle.id}/messages/approve"
    with httpx.Client(base_url=url) as http:
        sent = http.post(path, json={"value": True})
        assert sent.status_code == 200, sent.text
        assert (sent.json()["status"], sent.json()["value"]) == ("sent", True)
        _error(http.post(path, json={"value": False}), 409, "MessageAlreadySent")
        shown = http.get(f"/api/v1/executions/{handle.id}").json()
        assert [(m["name"], m["status"]) for m in shown["messages"]] == [("approve", "sent")]
        procs.worker()
        done = _finished(http, handle.id)
        assert done["result"] == "published hello early"
        assert [m["status"] for m in done["messages"]] == ["delivered"]
        _error(http.post(path, json={"value": True}), 409, "InvalidStateError")


def test_start_takes_a_delay_and_a_deadline_and_refuses_bad_times(procs: Processes) -> None:
    url = procs.server()
    path = "/api/v1/flows/greeting/executions"
    with httpx.Client(base_url=url) as http:
        started = http.post(path, json={"args": ["later"], "delay": 3600, "deadline": 60})
        assert started.status_code == 201, started.text
        shown = http.get(f"/api/v1/executions/{started.json()['id']}").json()
        assert shown["status"] == "queued" and shown["not_before"] is not None
        assert shown["deadline_after"] == 60 and shown["deadline"] is None
        at = http.post(path, json={"args": ["x"], "deadline": "2999-01-01T00:00:00+00:00"})
        assert at.json()["deadline"].startswith("2999-01-01"), at.text
        naive = _error(
            http.post(path, json={"args": ["x"], "not_before": "2999-01-01T00:00:00"}),
            400,
            "UsageError",
        )
        assert "time zone" in naive["message"]
        _error(http.post(path, json={"args": ["x"], "delay": -1}), 422, "RequestValidationError")


def test_start_validates_arguments_against_the_flow_signature(
    procs: Processes, client: tether.Client
) -> None:
    url = procs.server()
    with httpx.Client(base_url=url) as http:
        flows = {f["name"] for f in http.get("/api/v1/flows").json()["items"]}
        assert {"greeting", "approval", "report"} <= flows
        for body in (
            {"args": []},
            {"args": ["x"], "kwargs": {"nope": 1}},
            {"args": [5]},
            {"args": ["x"], "kwargs": {"times": "many"}},
        ):
            error = _error(
                http.post("/api/v1/flows/greeting/executions", json=body),
                422,
                "InputValidationError",
            )
            assert error["errors"], body
        _error(
            http.post("/api/v1/flows/greeting/executions", json={"args": "x"}),
            422,
            "RequestValidationError",
        )
        unknown = _error(
            http.post("/api/v1/flows/nope/executions", json={}), 404, "FlowNotFoundError"
        )
        assert "greeting" in unknown["message"]
        ok = http.post(
            "/api/v1/flows/greeting/executions",
            json={"args": ["x"], "kwargs": {"times": "2"}, "queue": "bulk", "priority": 3},
        )
        assert ok.status_code == 201, ok.text
    # Converted as the signature says ("2" -> 2), bound as Python binds them.
    assert client.get(ok.json()["id"]).args == (("x", 2), {})
    assert client.get(ok.json()["id"]).status == tether.Status.QUEUED  # the server runs nothing


# --- reading --------------------------------------------------------------------------------


def test_pagination_walks_1000_executions_once_each_while_more_arrive(
    procs: Processes, client: tether.Client
) -> None:
    ids = {server_flows.greeting.enqueue(f"n{i}").id for i in range(1000)}
    url = procs.server()
    seen: list[str] = []
    with httpx.Client(base_url=url) as http:
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 99, "flow": "greeting", "status": "queued"}
            if cursor:
                params["cursor"] = cursor
            page = http.get("/api/v1/executions", params=params).json()
            seen += [item["id"] for item in page["items"]]
            # Executions started meanwhile are newer: they never shift the pages.
            server_flows.greeting.enqueue("late")
            cursor = page["next"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 1000 and set(seen) == ids
        created = [client.summary(i).created_at for i in seen[:50]]
        assert created == sorted(created, reverse=True)
        _error(http.get("/api/v1/executions", params={"cursor": "garbage"}), 400, "UsageError")
        _error(http.get("/api/v1/executions", params={"limit": 0}), 422, "RequestValidationError")
        _error(http.get("/api/v1/executions", params={"status": "nope"}), 400, "UsageError")


def test_execution_record_logs_usage_metrics_and_values_as_data(
    procs: Processes, client: tether.Client
) -> None:
    url = procs.server()
    procs.worker()
    with httpx.Client(base_url=url) as http:
        started = http.post("/api/v1/flows/report/executions", json={"args": ["annual"]}).json()
        shown = _finished(http, started["id"])
        # A dataclass result as data with its type name: not the stored envelope.
        assert shown["result"] == {
            "type_name": "server_flows:Report",
            "kind": "dataclass",
            "data": {"title": "hello annual", "pages": [1, 2]},
        }
        assert "$t" not in json.dumps(shown)
        assert shown["args"] == {"args": ["annual"], "kwargs": {}}
        assert [c["name"] for c in shown["checkpoints"]] == ["greet"]
        assert shown["usage"]["requests"] == 0 and shown["lineage"] == {
            "parent_id": None,
            "replay_of": None,
        }
        logs = http.get(f"/api/v1/executions/{started['id']}/logs").json()["items"]
        assert [(entry["checkpoint"], entry["message"]) for entry in logs] == [
            ("greet", "greeting annual 0\n")
        ] or [entry["message"].strip() for entry in logs] == ["greeting annual 0"]
        _error(http.get("/api/v1/executions/nope"), 404, "ExecutionNotFound")
        _error(http.get("/api/v1/executions/nope/logs"), 404, "ExecutionNotFound")
        _error(http.get("/api/v1/nothing-here"), 404, "NotFound")
        server_flows.approval.enqueue("waits for a worker")
        metrics = http.get("/metrics").text
        assert 'tether_executions{status="succeeded",queue="default"} 1' in metrics
        assert "tether_oldest_queued_age_seconds" in metrics
        assert "tether_waits_pending" in metrics
        openapi = http.get("/api/v1/openapi.json").json()
        for path in (
            "/api/v1/executions",
            "/api/v1/executions/{execution_id}",
            "/api/v1/executions/{execution_id}/events",
            "/api/v1/executions/{execution_id}/waits/{name}",
            "/api/v1/flows/{name}/executions",
            "/api/v1/waits",
        ):
            assert path in openapi["paths"]


def _at_rest(shown: dict[str, Any]) -> dict[str, Any]:
    """A record without what changes by the second (an unfinished execution's duration) and
    without the CLI's hint of what to do next."""
    # The API's record also says how its window of calls is cut (checkpoint_count, next).
    apart = {"attention", "checkpoint_count", "checkpoints_next"}
    kept = {k: v for k, v in shown.items() if k not in apart}
    if kept["finished_at"] is None:
        kept.pop("duration")
    return kept


def test_the_api_and_the_cli_json_show_the_same_records(
    db_url: str, procs: Processes, client: tether.Client
) -> None:
    url = procs.server()
    done = server_flows.report.run("alike")  # this process has the class; the CLI has not
    done.result(timeout=30)
    waiting = server_flows.approval.run("alike")
    retry_until(lambda: waiting.status() == tether.Status.WAITING, what="the wait")
    with httpx.Client(base_url=url) as http:
        for execution_id in (done.id, waiting.id):
            shown = http.get(f"/api/v1/executions/{execution_id}").json()
            printed = run_cli(db_url, "executions", "get", execution_id, "--json")
            assert printed.returncode == 0, printed.stderr
            assert _at_rest(json.loads(printed.stdout)) == _at_rest(shown)
        listed = http.get("/api/v1/executions").json()["items"]
        waits = http.get("/api/v1/waits").json()["items"]
    printed_list = json.loads(run_cli(db_url, "executions", "list", "--json").stdout)
    assert [_at_rest(r) for r in printed_list] == [_at_rest(r) for r in listed]
    assert json.loads(run_cli(db_url, "executions", "waits", "--json").stdout) == waits
    assert listed[1]["result"]["type_name"] == "server_flows:Report"


def test_an_execution_with_thousands_of_calls_is_read_a_window_at_a_time(
    procs: Processes, client: tether.Client
) -> None:
    handle = server_flows.many_steps.run(1200)
    assert handle.result(timeout=120) == 1200
    url = procs.server()
    with httpx.Client(base_url=url) as http:
        first = http.get(f"/api/v1/executions/{handle.id}").json()
        assert [c["name"] for c in first["checkpoints"]] == ["greet"] * 100
        assert [c["position"] for c in first["checkpoints"][:3]] == ["0", "1", "2"]
        assert (first["checkpoint_count"], first["checkpoints_next"]) == (1200, 100)
        assert first["checkpoints_done"] == 1200
        last = http.get(
            f"/api/v1/executions/{handle.id}",
            params={"checkpoint_offset": 1000, "checkpoint_limit": 500},
        ).json()
        assert [c["position"] for c in last["checkpoints"]] == [str(n) for n in range(1000, 1200)]
        assert last["checkpoints"][-1]["result"] == "hello step 1199"
        assert last["checkpoints_next"] is None
        _error(
            http.get(f"/api/v1/executions/{handle.id}", params={"checkpoint_limit": 0}),
            422,
            "RequestValidationError",
        )
        page = http.get(f"/executions/{handle.id}", params={"calls": 100}).text
        assert "Checkpoint calls 101 to 150 of 1200" in page
        assert "hello step 120" in page and "hello step 150" not in page
    whole = client.get(handle.id)
    assert len(whole.checkpoints) == whole.checkpoint_count == 1200


def test_a_finished_executions_outline_is_read_again_once_a_retry_changes_it(
    procs: Processes, client: tether.Client, tmp_path: Path
) -> None:
    # 4 gathered branches of 60 calls, then one that fails: 241 calls, above the size whose
    # outline the server keeps while the execution is finished.
    handle = server_flows.fanned_then_fragile.run(4, 60, str(tmp_path / "flag"))
    with pytest.raises(tether.ExecutionFailed):
        handle.result(timeout=120)
    order = [c.position for c in client.get(handle.id).checkpoints]
    assert len(order) == 241
    url = procs.server()
    with httpx.Client(base_url=url) as http:
        path = f"/api/v1/executions/{handle.id}"
        window = {"checkpoint_offset": 200, "checkpoint_limit": 30}
        failed = [http.get(path, params=window).json() for _ in range(2)]
        assert failed[0] == failed[1]
        assert [c["position"] for c in failed[0]["checkpoints"]] == order[200:230]
        assert (failed[0]["checkpoint_count"], failed[0]["checkpoints_done"]) == (241, 240)
        assert failed[0]["usage"]["requests"] == 4
        assert client.retry(handle.id).result(timeout=120) == "recovered"
        done = http.get(path, params={"checkpoint_offset": 230}).json()
        assert done["status"] == "succeeded"
        assert (done["checkpoint_count"], done["checkpoints_done"]) == (241, 241)
        assert [c["result"] for c in done["checkpoints"]][-1] == "recovered"
        page = http.get(f"/executions/{handle.id}", params={"calls": 200}).text
        assert "Checkpoint calls 201 to 241 of 241" in page and "recovered" in page


def test_outlines_kept_are_big_ones_and_the_least_recently_read_go_first() -> None:
    kept = Outlines(min_calls=3, max_positions=10)

    def outline(calls: int) -> Outline:
        return Outline(tuple(str(n) for n in range(calls)), calls, Usage())

    small, a, b, c, huge = (("x" + k, "succeeded", 1.0) for k in "sabch")
    kept.put(small, outline(2))  # cheap to read again
    kept.put(huge, outline(11))  # more than all the room there is
    assert kept.get(small) is None and kept.get(huge) is None
    kept.put(a, outline(4))
    kept.put(b, outline(4))
    assert kept.get(a) is not None  # read last: b is now the least recently read
    kept.put(c, outline(4))
    assert kept.get(b) is None and kept.get(a) == outline(4) and kept.get(c) == outline(4)
    assert len(kept) == 2


def test_usage_totals_over_executions(procs: Processes, client: tether.Client) -> None:
    asked = [server_flows.asking.run(question) for question in ("a", "b")]
    for question, handle in zip(("a", "b"), asked, strict=True):
        assert handle.result() == f"answer to {question}"
    server_flows.greeting.run("no model").result()
    url = procs.server()
    with httpx.Client(base_url=url) as http:
        # An execution's usage counts every call, those outside the window of calls read too.
        past = http.get(f"/api/v1/executions/{asked[0].id}", params={"checkpoint_offset": 1})
        assert past.json()["checkpoints"] == []
        assert (past.json()["usage"]["input_tokens"], past.json()["checkpoints_done"]) == (100, 1)
        totals = http.get("/api/v1/usage").json()["usage"]
        assert (totals["input_tokens"], totals["output_tokens"], totals["requests"]) == (200, 40, 2)
        assert totals["cost_usd"] == pytest.approx(1.0)
        assert (
            http.get("/api/v1/usage", params={"flow": "greeting"}).json()["usage"]["requests"] == 0
        )
        later = http.get("/api/v1/usage", params={"since": "2999-01-01T00:00:00Z"}).json()
        assert later["usage"]["requests"] == 0


def test_stored_values_are_shown_as_data_and_pickles_are_never_loaded() -> None:
    pickled = json.dumps({"$t": "pickle", "v": "gARLAS4=", "mac": "0" * 64})
    assert serde.to_data(pickled) == {"type_name": None, "kind": "pickle", "data": None}
    text = serde.dumps({"when": (1, {2: b"x"}), "$t": "sneaky"})
    assert serde.to_data(text) == {"when": [1, [[2, "eA=="]]], "$t": "sneaky"}


def test_the_server_never_imports_what_a_stored_row_names(
    db_url: str, procs: Processes, client: tether.Client, tmp_path: Path
) -> None:
    """Anyone who can write the store could name a module: reading, resuming and forking
    over HTTP import nothing of it (the server runs no execution; workers do)."""
    (tmp_path / "planted.py").write_text(
        "import pathlib, tether\n"
        f"pathlib.Path({str(tmp_path / 'imported')!r}).write_text('ran')\n"
        "@tether.flow\ndef planted() -> None: ...\n"
    )
    store = client._store
    now = time.time()
    result = serde.dumps(Report("x", (1,)))
    store.create_execution(
        ExecutionRow(
            id="planted-1",
            flow="planted",
            import_path="planted:planted",
            script=None,
            args=serde.dumps({"args": [], "kwargs": {}}),
            status="queued",
            created_at=now,
            updated_at=now,
        )
    )
    store.create_execution(
        ExecutionRow(
            id="planted-2",
            flow="planted",
            import_path="planted:planted",
            script=None,
            args=serde.dumps({"args": [], "kwargs": {}}),
            status="succeeded",
            result=result.replace("server_flows:Report", "planted:Thing"),
            created_at=now,
            updated_at=now,
            finished_at=now,
        )
    )
    path = os.pathsep.join([str(tmp_path), child_env(db_url)["PYTHONPATH"]])
    url = procs.server(PYTHONPATH=path)
    with httpx.Client(base_url=url) as http:
        shown = http.get("/api/v1/executions/planted-2").json()
        assert shown["result"]["type_name"] == "planted:Thing"
        assert http.post("/api/v1/executions/planted-1/resume", json={}).status_code == 200
        fork = http.post("/api/v1/executions/planted-2/replay", json={"from": 0})
        assert fork.status_code == 200, fork.text
        assert http.get("/api/v1/executions", params={"flow": "planted"}).status_code == 200
    assert not (tmp_path / "imported").exists()


# --- operating ------------------------------------------------------------------------------


def test_cancel_resume_retry_and_replay(
    procs: Processes, client: tether.Client, tmp_path: Path
) -> None:
    url = procs.server()
    with httpx.Client(base_url=url) as http:
        queued = server_flows.approval.enqueue("to cancel")
        assert (
            http.post(f"/api/v1/executions/{queued.id}/resume", json={}).json()["status"]
            == "queued"
        )
        cancelled = http.post(f"/api/v1/executions/{queued.id}/cancel", json={})
        assert cancelled.json() == {"id": queued.id, "status": "cancelled"}
        _error(
            http.post(f"/api/v1/executions/{queued.id}/resume", json={}), 409, "InvalidStateError"
        )
        _error(
            http.post(f"/api/v1/executions/{queued.id}/retry", json={}), 409, "InvalidStateError"
        )
        _error(http.post("/api/v1/executions/nope/cancel", json={}), 404, "ExecutionNotFound")

        procs.worker()
        flag = tmp_path / "flag"
        failing = http.post(
            "/api/v1/flows/fails_once/executions", json={"args": [str(flag)]}
        ).json()
        failed = _finished(http, failing["id"], "failed")
        assert failed["error"]["type"] == "RuntimeError"
        retried = http.post(f"/api/v1/executions/{failing['id']}/retry", json={})
        assert retried.status_code == 200, retried.text
        # Queued for the worker, which may have taken it already.
        assert retried.json()["status"] in ("queued", "running", "succeeded")
        assert _finished(http, failing["id"])["result"] == "recovered"

        source = http.post("/api/v1/flows/greeting/executions", json={"args": ["src"]}).json()
        _finished(http, source["id"])
        _error(
            http.post(f"/api/v1/executions/{source['id']}/replay", json={"from": "nope"}),
            400,
            "UsageError",
        )
        fork = http.post(
            f"/api/v1/executions/{source['id']}/replay",
            json={"from": 1, "overrides": {"greet": "hello override"}},
        )
        assert fork.status_code == 200, fork.text
        assert fork.json()["replay_of"] == source["id"]
        assert _finished(http, fork.json()["id"])["result"] == "hello override"


def test_memory_read_and_write(procs: Processes, tokens: dict[str, str]) -> None:
    url = procs.server()
    with httpx.Client(base_url=url, headers=_auth(tokens["operate"])) as http:
        path = "/api/v1/memory/namespace/alice/prefs/theme"
        written = http.put(path, json={"value": {"dark": True}})
        assert written.status_code == 200 and written.json()["version"] == 1
        assert (
            http.put(path, json={"value": {"dark": False}, "if_version": 1}).json()["version"] == 2
        )
        _error(http.put(path, json={"value": 0, "if_version": 1}), 409, "MemoryConflictError")
        shown = http.get(path).json()
        assert shown["value"] == {"dark": False} and shown["version"] == 2
        assert http.get(path, params={"version": 1}).json()["value"] == {"dark": True}
        _error(http.get("/api/v1/memory/namespace/alice/missing"), 404, "MemoryKeyError")
        _error(http.get("/api/v1/memory/galaxy/alice/x"), 422, "RequestValidationError")
        listed = http.get("/api/v1/memory", params={"scope": "namespace", "scope_id": "alice"})
        assert [e["key"] for e in listed.json()["items"]] == ["prefs/theme"]
        assert [e["key"] for e in http.get("/api/v1/memory").json()["items"]] == ["prefs/theme"]
        deleted = http.delete(path)
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        _error(http.get(path), 404, "MemoryKeyError")
        _error(http.delete(path), 404, "MemoryKeyError")
        assert http.get(path, params={"version": 2}).json()["value"] == {"dark": False}


# --- Server-Sent Events -----------------------------------------------------------------------


def _messages(response: httpx.Response) -> Iterator[dict[str, Any]]:
    fields: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if "event" in fields:
                fields["data"] = json.loads(fields["data"])
                yield fields
            fields = {}
            continue
        name, _, value = line.partition(": ")
        fields[name] = value


def test_events_stream_resumes_from_last_event_id(procs: Processes, client: tether.Client) -> None:
    url = procs.server()
    procs.worker()
    with httpx.Client(base_url=url, timeout=60) as http:
        started = http.post("/api/v1/flows/approval/executions", json={"args": ["stream"]}).json()
        path = f"/api/v1/executions/{started['id']}/events"
        retry_until(lambda: client.summary(started["id"]).status == tether.Status.WAITING, 60)
        # Live: the stream is open while the execution waits; input arrives; it ends.
        seen: list[dict[str, Any]] = []
        with http.stream("GET", path) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for message in _messages(response):
                seen.append(message)
                if message["event"] == "status" and message["data"]["status"] == "waiting":
                    client.input(started["id"], "approve", True, by="test")
                if message["event"] == "end":
                    break
        statuses = [m["data"]["status"] for m in seen if m["event"] == "status"]
        assert statuses[0] == "waiting" and statuses[-1] == "succeeded"
        events = [m for m in seen if m["event"] == "event"]
        ids = [int(m["id"]) for m in events]
        assert ids == sorted(ids) and len(ids) >= 2
        assert any(m["data"]["kind"] == "input" for m in events)
        # Resumed from the first event: exactly the ones after it, each once.
        with http.stream("GET", path, headers={"Last-Event-ID": str(ids[0])}) as response:
            again = list(_messages(response))
        assert [int(m["id"]) for m in again if m["event"] == "event"] == ids[1:]
        assert again[-1]["event"] == "end"
        _error(http.get("/api/v1/executions/nope/events"), 404, "ExecutionNotFound")
        _error(http.get(path, headers={"Last-Event-ID": "x"}), 400, "UsageError")
        _error(http.get(path, headers={"Last-Event-ID": str(2**64)}), 400, "UsageError")


def test_schedules_listed_paused_and_resumed(
    procs: Processes, tokens: dict[str, str], db_url: str
) -> None:
    from tether._core.config import store_for
    from tether.store import ScheduleRow

    store_for().ensure_schedule(ScheduleRow("nightly", "0 3 * * *", False, 0.0, 10_800.0, 0.0))
    url = procs.server()
    with httpx.Client(base_url=url, headers=_auth(tokens["read"])) as http:
        [listed] = http.get("/api/v1/schedules").json()["items"]
        assert listed == {
            "name": "nightly", "spec": "0 3 * * *", "paused": False,
            "last_tick": "1970-01-01T00:00:00+00:00", "next_tick": "1970-01-01T03:00:00+00:00",
        }  # fmt: skip
        _error(http.post("/api/v1/schedules/nightly/pause", json={}), 403, "Forbidden")
    with httpx.Client(base_url=url, headers=_auth(tokens["operate"])) as http:
        assert http.post("/api/v1/schedules/nightly/pause", json={}).json()["paused"] is True
        assert tether.Client().schedules()[0].paused
        assert http.post("/api/v1/schedules/nightly/resume", json={}).json()["paused"] is False
        missing = _error(
            http.post("/api/v1/schedules/daily/pause", json={}), 404, "ScheduleNotFound"
        )
        assert "schedules: nightly" in missing["message"]


def _selection(client: tether.Client) -> None:
    plant(
        client,
        **{
            "abc-1": {"flow": "alpha", "status": "queued"},
            "abc-2": {"flow": "alpha", "status": "succeeded", "queue": "fast"},
            "abd-3": {"flow": "alpha", "status": "failed", "parent_id": "abc-1"},
            "xyz-4": {"flow": "beta", "status": "queued", "parent_id": "abc-1"},
            "xyz-5": {"flow": "beta", "status": "waiting", "queue": "fast"},
        },
    )


def test_status_counts_count_what_the_other_filters_of_the_list_select(
    procs: Processes, client: tether.Client
) -> None:
    _selection(client)
    url = procs.server()
    zero = {s.value: 0 for s in tether.Status}
    cases: list[tuple[dict[str, str], dict[str, int], set[str]]] = [
        ({}, {"queued": 2, "succeeded": 1, "failed": 1, "waiting": 1}, set()),
        ({"flow": "alpha"}, {"queued": 1, "succeeded": 1, "failed": 1}, set()),
        ({"parent": "abc-1"}, {"failed": 1, "queued": 1}, {"abd-3", "xyz-4"}),
        ({"queue": "fast"}, {"succeeded": 1, "waiting": 1}, {"abc-2", "xyz-5"}),
        ({"id_prefix": "ab"}, {"queued": 1, "succeeded": 1, "failed": 1}, set()),
        ({"id_prefix": "abc", "flow": "alpha"}, {"queued": 1, "succeeded": 1}, set()),
        ({"flow": "beta", "queue": "default"}, {"queued": 1}, {"xyz-4"}),
        ({"flow": "gamma"}, {}, set()),
    ]
    with httpx.Client(base_url=url) as http:
        for filters, expected, ids in cases:
            # The status filter narrows the list, not the counts (they are its tabs).
            body = http.get(
                "/api/v1/executions", params={**filters, "counts": "true", "status": "queued"}
            ).json()
            assert body["counts"] == {**zero, **expected}, filters
            assert body["counts_cap"] >= 10_000
            listed = http.get("/api/v1/executions", params=filters).json()
            assert len(listed["items"]) == sum(expected.values()), filters
            if ids:
                assert {item["id"] for item in listed["items"]} == ids
            assert all(item["status"] == "queued" for item in body["items"])
        # Without counts=true the page costs no counting, and says none.
        assert "counts" not in http.get("/api/v1/executions").json()
