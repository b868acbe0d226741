"""Stored data is data: rows rewritten as an attacker with write access to the store would
write them never run code in a process that reads them, and each refusal is a clear error.

Every crafted value here, if it were imported, called or unpickled, creates a sentinel file;
the tests run the read paths (the CLI in a subprocess, `Client`, resume) and check that the
file never appears. Then the other half of the rule: a recorded error comes back as its own
class when the process has it, so flow code takes the same path live and after a crash.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import stored_data_flows as flows
import tether
from helpers import retry_until, run_child, run_cli, spawn_child
from tether import Status
from tether._core import config as _config
from tether._core import serde

# --- crafted rows -------------------------------------------------------------------------


class _RunsOnUnpickle:
    """Unpickling this runs a shell command: what a hostile pickle looks like."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def _pickle_tag(command: str, mac: str | None = None) -> dict[str, Any]:
    blob = pickle.dumps(_RunsOnUnpickle(command))
    tag: dict[str, Any] = {"$t": "pickle", "v": base64.b64encode(blob).decode()}
    if mac is not None:
        tag["mac"] = mac
    return tag


def _class_tags(command: str, evil_module: str) -> dict[str, Any]:
    """One tagged value of every kind that names a class, each naming something that runs
    `command` when called or imported."""
    return {
        "path": {"$t": "path", "c": "os:system", "v": command},
        "enum": {"$t": "enum", "c": "os:system", "v": command},
        "namedtuple": {"$t": "namedtuple", "c": "subprocess:getoutput", "v": [command]},
        "dataclass": {"$t": "dataclass", "c": "subprocess:getoutput", "v": {"cmd": command}},
        "model": {"$t": "model", "c": "os:popen", "v": {"cmd": command}},
        # A class in a module nobody imported: importing it runs the module.
        "unimported": {"$t": "dataclass", "c": f"{evil_module}:Thing", "v": {"x": 1}},
        # A lazy import behind a module's __getattr__ (tether.llm imports tether.ai).
        "lazy attribute": {"$t": "model", "c": "tether:llm", "v": {}},
    }


@pytest.fixture
def sentinel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str, str]]:
    """(sentinel file, a command that creates it, a module whose import creates it). The
    module is importable here and in child processes, so only not importing it saves us."""
    target = tmp_path / "pwned"
    command = f"touch {target}"
    modules = tmp_path / "mods"
    modules.mkdir()
    (modules / "evil_mod.py").write_text(
        f"import pathlib\npathlib.Path({str(target)!r}).touch()\nclass Thing:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(modules), os.environ.get("PYTHONPATH", "")])
    )
    yield target, command, "evil_mod"
    assert not target.exists(), "a stored value ran code"


def _execute(db_url: str, sql: str, *params: Any) -> None:
    """Write to the store behind tether's back, as anyone with the database's password can."""
    if db_url.startswith("sqlite"):
        with closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as conn:
            conn.execute(sql, params)
            conn.commit()
    else:
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]


def _finished_execution() -> str:
    handle = flows.three_steps.run()
    assert handle.result(timeout=30) == "step 0 / step 1 / step 2"
    return handle.id


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "unexpected" not in result.stderr, result.stderr


# --- reading values ---------------------------------------------------------------------------


def test_tagged_values_naming_functions_or_unimported_modules_come_back_as_data(
    db_url: str, sentinel: tuple[Path, str, str]
) -> None:
    _, command, evil = sentinel
    execution_id = _finished_execution()
    tags = _class_tags(command, evil)
    result = {"items": list(tags.values()), "nested": {"deep": [tags["path"]]}}
    _execute(
        db_url,
        "UPDATE checkpoints SET result = ? WHERE execution_id = ? AND position = '0'",
        json.dumps(result),
        execution_id,
    )
    _execute(
        db_url,
        "UPDATE executions SET result = ? WHERE id = ?",
        json.dumps(tags["unimported"]),
        execution_id,
    )

    record = tether.Client(db_url).get(execution_id)
    decoded = record.checkpoints[0].result
    assert all(type(v) is tether.StoredValue for v in decoded["items"])
    by_kind = {v.kind: v for v in decoded["items"][:5]}
    assert by_kind["path"] == tether.StoredValue("os:system", command, "path")
    assert by_kind["model"].data == {"cmd": command}
    assert decoded["items"][5].type_name == f"{evil}:Thing"
    assert decoded["nested"]["deep"][0].type_name == "os:system"
    assert record.result == tether.StoredValue(f"{evil}:Thing", {"x": 1}, "dataclass")
    assert evil not in sys.modules

    for args in (("get", execution_id, "--json"), ("get", execution_id), ("list", "--json")):
        shown = run_cli(db_url, "executions", *args)
        assert shown.returncode == 0, shown.stderr
        _no_traceback(shown)
    listed = json.loads(run_cli(db_url, "executions", "list", "--json").stdout)
    assert listed[0]["result"]["type_name"] == f"{evil}:Thing"


def test_a_stored_value_whose_class_is_loaded_is_restored_and_registering_restores_more(
    db_url: str,
) -> None:
    execution_id = _finished_execution()
    stored = serde.dumps(flows.Verdict(approved=True, reason="fine"))
    _execute(
        db_url,
        "UPDATE checkpoints SET result = ? WHERE execution_id = ? AND position = '1'",
        stored,
        execution_id,
    )
    assert tether.Client(db_url).get(execution_id).checkpoints[1].result == flows.Verdict(
        approved=True, reason="fine"
    )
    # A process without the module sees data; after tether.register(), the class.
    code = textwrap.dedent(
        f"""
        import sys, tether
        record = tether.Client().get({execution_id!r})
        value = record.checkpoints[1].result
        print(type(value).__name__, value.type_name, value.data["approved"])
        assert "stored_data_flows" not in sys.modules
        from pydantic import BaseModel
        class Verdict(BaseModel):
            approved: bool
            reason: str = ""
        Verdict.__module__ = "stored_data_flows"
        tether.register(Verdict)
        again = tether.Client().get({execution_id!r}).checkpoints[1].result
        print(type(again).__name__, again.approved, again.reason)
        """
    )
    out = run_child(code, db_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == [
        "StoredValue stored_data_flows:Verdict True",
        "Verdict True fine",
    ]


def test_unsigned_and_forged_pickles_are_refused_on_every_read_path(
    db_url: str, sentinel: tuple[Path, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, command, _ = sentinel
    execution_id = _finished_execution()
    unsigned = _pickle_tag(command)
    forged = _pickle_tag(command, mac="0" * 64)
    _execute(
        db_url,
        "UPDATE checkpoints SET result = ? WHERE execution_id = ? AND position = '0'",
        json.dumps([1, {"x": unsigned}]),
        execution_id,
    )
    _execute(
        db_url,
        "UPDATE checkpoints SET result = ? WHERE execution_id = ? AND position = '1'",
        json.dumps(forged),
        execution_id,
    )
    _execute(
        db_url, "UPDATE executions SET result = ? WHERE id = ?", json.dumps(unsigned), execution_id
    )

    record = tether.Client(db_url).get(execution_id)
    with pytest.raises(tether.PickleRefused, match="pickle is off") as info:
        _ = record.checkpoints[0].result
    assert info.value.path == "result of checkpoint 'step' at position 0[1]['x']"
    with pytest.raises(tether.PickleRefused):
        _ = record.result

    # Pickle on and a key set: still refused, the signature does not match.
    monkeypatch.setenv("TETHER_SECRET", "the-real-key")
    _config.reset()
    tether.configure(db=db_url, pickle=True)
    record = tether.Client(db_url).get(execution_id)
    for position in (0, 1):
        with pytest.raises(tether.PickleRefused, match="signature does not match"):
            _ = record.checkpoints[position].result

    for args in (("get", execution_id, "--json"), ("get", execution_id), ("list", "--json")):
        for env in ({}, {"TETHER_SECRET": "the-real-key"}):
            shown = run_cli(db_url, "executions", *args, **env)
            _no_traceback(shown)


def test_a_pickled_wait_question_and_a_schema_naming_unloaded_types_are_refused_or_data(
    db_url: str, sentinel: tuple[Path, str, str]
) -> None:
    _, command, evil = sentinel
    handle = flows.asks_for_a_verdict.run("tea")
    client = tether.Client(db_url)
    retry_until(lambda: client.get(handle.id).status is Status.WAITING, what="the wait")
    _execute(
        db_url,
        "UPDATE waits SET question = ?, schema_ref = ? WHERE execution_id = ?",
        json.dumps(_pickle_tag(command)),
        json.dumps({"union": [{"type": f"{evil}:Thing"}, {"type": "os:system"}]}),
        handle.id,
    )

    with pytest.raises(tether.PickleRefused, match="question of wait 'review'"):
        client.pending_waits()
    shown = run_cli(db_url, "executions", "waits")
    assert shown.returncode == 1
    assert "question of wait 'review' was not loaded" in shown.stderr
    _no_traceback(shown)
    shown = run_cli(db_url, "executions", "get", handle.id)
    _no_traceback(shown)

    # Input checked against a schema whose classes cannot be found here: nothing is
    # imported, and any JSON passes; the tampered schema is all the flow has, too.
    _execute(db_url, "UPDATE waits SET question = NULL WHERE execution_id = ?", handle.id)
    given = run_cli(db_url, "executions", "input", handle.id, "--value", '{"approved": true}')
    assert given.returncode == 0, given.stderr
    with pytest.raises(tether.ExecutionFailed, match="AttributeError"):
        handle.result(timeout=30)


def test_a_wait_schema_of_a_class_the_giver_lacks_is_validated_by_the_flow(db_url: str) -> None:
    handle = flows.asks_for_a_verdict.run("coffee")
    client = tether.Client(db_url)
    retry_until(lambda: client.get(handle.id).status is Status.WAITING, what="the wait")
    # The CLI process never imports stored_data_flows: it checks the JSON shape only.
    given = run_cli(db_url, "executions", "input", handle.id, "--value", '{"approved": true}')
    assert given.returncode == 0, given.stderr
    assert handle.result(timeout=30) == "Verdict approved=True"


def test_a_recorded_error_with_a_pickle_field_is_never_unpickled_on_resume(
    db_url: str, sentinel: tuple[Path, str, str]
) -> None:
    _, command, _ = sentinel
    handle = flows.catches_then_waits.run()
    client = tether.Client(db_url)
    retry_until(lambda: client.get(handle.id).status is Status.WAITING, what="the wait")
    # The error as an older tether stored it, with a "pickle" field an attacker filled.
    error = {
        "type": "ValueError",
        "message": "draft 7 is not acceptable",
        "traceback": "Traceback (most recent call last): ...",
        "pickle": _pickle_tag(command)["v"],
    }
    _execute(
        db_url,
        "UPDATE checkpoints SET error = ? WHERE execution_id = ? AND position = '0'",
        json.dumps(error),
        handle.id,
    )
    client.input(handle.id, "go", True)  # resumed by replay, through the recorded error
    assert handle.result(timeout=30) == "except ValueError: draft 7 is not acceptable"
    assert client.get(handle.id).attempt == 2


def test_a_recorded_error_naming_a_class_the_process_lacks_is_a_checkpoint_error(
    db_url: str, sentinel: tuple[Path, str, str]
) -> None:
    evil = sentinel[2]
    handle = flows.catches_then_waits.run()
    client = tether.Client(db_url)
    retry_until(lambda: client.get(handle.id).status is Status.WAITING, what="the wait")
    error = json.loads(serde.error_to_text(ValueError("draft 7 is not acceptable")))
    error.update(type=f"{evil}.Thing", **{"class": f"{evil}:Thing"})
    _execute(
        db_url,
        "UPDATE checkpoints SET error = ? WHERE execution_id = ? AND position = '0'",
        json.dumps(error),
        handle.id,
    )
    client.input(handle.id, "go", True)
    assert handle.result(timeout=30) == (
        f"except Exception: CheckpointError: {evil}.Thing: draft 7 is not acceptable"
    )


def test_a_pickled_memory_blob_is_refused_by_memory_get_list_and_history(
    db_url: str, sentinel: tuple[Path, str, str]
) -> None:
    _, command, _ = sentinel
    value = '{"a": [1, 2]}'
    written = run_cli(db_url, "memory", "set", "notes", "--value", value, "--namespace", "team")
    assert written.returncode == 0, written.stderr
    _execute(db_url, "UPDATE blobs SET data = ?", json.dumps({"kept": _pickle_tag(command)}))
    with pytest.raises(tether.PickleRefused, match=r"\['kept'\] was not loaded"):
        tether.memory.get("notes", namespace="team")
    for env in ({}, {"TETHER_SECRET": "some-key"}):
        shown = run_cli(db_url, "memory", "get", "notes", "--namespace", "team", **env)
        _no_traceback(shown)
        # Shown as data (a pickle by its kind alone), never unpickled, never the envelope.
        assert shown.returncode == 0, shown.stderr
        pickled = {"type_name": None, "kind": "pickle", "data": None}
        assert json.loads(shown.stdout)["kept"] == pickled
        for args in (("list",), ("history", "notes", "--namespace", "team")):
            listed = run_cli(db_url, "memory", *args, **env)
            _no_traceback(listed)


# --- errors: the same path live and resumed ---------------------------------------------------


def test_a_recorded_value_error_takes_the_same_except_path_live_and_after_sigkill(
    db_url: str, tmp_path: Path
) -> None:
    live_gate = tmp_path / "live-gate"
    live_gate.touch()
    live = flows.catches_value_error.run(str(live_gate)).result(timeout=30)
    assert live == "except ValueError: draft 7 is not acceptable"

    gate = tmp_path / "gate"
    code = textwrap.dedent(
        f"""
        import stored_data_flows
        handle = stored_data_flows.catches_value_error.run({str(gate)!r})
        print(handle.id, flush=True)
        handle.result(timeout=60)
        """
    )
    child = spawn_child(code, db_url)
    try:
        assert child.stdout is not None
        execution_id = child.stdout.readline().strip()
        client = tether.Client(db_url)

        def failure_recorded() -> bool:
            calls = client.get(execution_id).checkpoints
            return bool(calls) and calls[0].status == "failed"

        retry_until(failure_recorded, what="the failed checkpoint to be recorded")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    gate.touch()
    resumed = run_cli(
        db_url, "executions", "resume", execution_id, "--json", "--import", "stored_data_flows"
    )
    assert resumed.returncode == 0, resumed.stderr
    record = tether.Client(db_url).get(execution_id)
    assert record.status is Status.SUCCEEDED, record.error
    assert record.result == live
    assert record.attempt == 2
