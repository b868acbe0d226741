"""A process runs the flows it loaded itself, never what a stored row names.

Rows are crafted as someone who can write the store would: their `import_path` names a
module, their `script` a file, each of which leaves a sentinel file when imported or run and
sits where the process could import it (the working directory, sys.path). `recover`,
`resume`, `replay`, `tether worker --import other_module` and every read command leave the
sentinel absent and name the flag that would load the flow; given that flag (or
`TETHER_IMPORTS`, or `[tool.tether] imports`), the same execution runs.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import tether
from helpers import retry_until, run_python, spawn_python
from tether import Status
from tether._core import serde
from tether.store import ExecutionRow

# Module names are unique per test: a module imported (and its flows loaded) by one test
# stays in this process.
_names = itertools.count()

PLANTED = """
import pathlib
import tether

pathlib.Path(__file__).with_suffix(".ran").write_text("top level ran")


@tether.checkpoint
def shout(text: str) -> str:
    return text.upper()


@tether.flow
def agent(text: str) -> str:
    return shout(text) + "!"
"""

OTHER = """
import tether


@tether.flow
def other(text: str) -> str:
    return text
"""


class Planted:
    """A module and a script that leave a sentinel when loaded, each with the flow `agent`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        n = next(_names)
        self.module = f"planted_{n}_{uuid.uuid4().hex[:6]}"
        self.module_file = folder / f"{self.module}.py"
        self.module_file.write_text(PLANTED)
        self.script = folder / f"planted_script_{n}.py"
        self.script.write_text(PLANTED + '\nif __name__ == "__main__":\n    agent.run("x")\n')

    @property
    def module_ran(self) -> bool:
        return self.module_file.with_suffix(".ran").exists()

    @property
    def script_ran(self) -> bool:
        return self.script.with_suffix(".ran").exists()

    def forget(self) -> None:
        for path in (self.module_file, self.script):
            path.with_suffix(".ran").unlink(missing_ok=True)


def craft(client: tether.Client, import_path: str, script: str | None) -> str:
    """Write a queued execution of flow `agent` whose row names `import_path` and `script`."""
    now = time.time()
    row = ExecutionRow(
        id=f"crafted-{uuid.uuid4().hex[:12]}",
        flow="agent",
        import_path=import_path,
        script=script,
        args=serde.dumps({"args": ["durable"], "kwargs": {}}),
        status=Status.QUEUED.value,
        created_at=now,
        updated_at=now,
    )
    client._store.create_execution(row)
    return row.id


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Planted:
    # Importable in this process too, as it would be for an application run from there.
    monkeypatch.syspath_prepend(str(tmp_path))
    return Planted(tmp_path)


def tether_cli(db_url: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m tether ...` run from `cwd` (importable there, as for `python -m`)."""
    return run_python(["-m", "tether", *args], db_url, cwd=cwd, COLUMNS="300", **env)


def said(done: subprocess.CompletedProcess[str]) -> str:
    return " ".join((done.stdout + done.stderr).split())


def test_recover_imports_nothing_a_row_names_and_says_which_flag_loads_it(
    planted: Planted, client: tether.Client, db_url: str
) -> None:
    by_module = craft(client, f"{planted.module}:agent", None)
    by_script = craft(client, "__main__:agent", str(planted.script))
    # A module's row with a script beside it: the script is not a module's to name.
    by_both = craft(client, f"{planted.module}:agent", str(planted.script))

    skipped = tether_cli(db_url, planted.folder, "executions", "recover")
    assert skipped.returncode == 1, said(skipped)
    message = said(skipped)
    assert "Nothing to recover" not in message
    assert f"skipped 2 executions ({by_module}, {by_both}): flow `{planted.module}:agent` " in (
        message
    ) or f"skipped 2 executions ({by_both}, {by_module}): flow `{planted.module}:agent` " in (
        message
    ), message
    assert f"is not loaded; add `--import {planted.module}`" in message
    assert f"skipped 1 execution ({by_script}): flow `agent` of the script {planted.script} " in (
        message
    ), message
    assert f"add `--script {planted.script}`" in message
    assert not planted.module_ran and not planted.script_ran
    for execution_id in (by_module, by_script, by_both):
        record = client.get(execution_id)
        assert record.status is Status.QUEUED and record.attempt == 0
        assert any("recover skipped it" in w for w in record.warnings), record.warnings

    loaded = tether_cli(
        db_url, planted.folder, "executions", "recover",
        "--import", planted.module, "--script", str(planted.script),
    )  # fmt: skip
    assert loaded.returncode == 0, said(loaded)
    for execution_id in (by_module, by_script, by_both):
        record = client.get(execution_id)
        assert (record.status, record.result) == (Status.SUCCEEDED, "DURABLE!"), record.error
    assert planted.module_ran and planted.script_ran  # loaded because the user named them


def test_client_recover_and_resume_load_nothing_a_row_names(
    planted: Planted, client: tether.Client
) -> None:
    by_module = craft(client, f"{planted.module}:agent", None)
    by_script = craft(client, "__main__:agent", str(planted.script))

    recovered = client.recover()
    assert recovered == []
    assert sorted((s.execution_id, s.flow, s.load_with) for s in recovered.skipped) == sorted(
        [
            (by_module, "agent", f"--import {planted.module}"),
            (by_script, "agent", f"--script {planted.script}"),
        ]
    )
    with pytest.raises(tether.FlowNotFoundError, match=f"add `--import {planted.module}`"):
        client.resume(by_module)
    with pytest.raises(tether.FlowNotFoundError, match="add `--script "):
        client.resume(by_script)
    assert planted.module not in sys.modules and "__tether_main__" not in sys.modules
    assert not planted.module_ran and not planted.script_ran
    assert client.get(by_module).status is Status.QUEUED

    # The application imports the module itself: now its flows are this process's.
    __import__(planted.module)
    assert client.resume(by_module).result(timeout=30) == "DURABLE!"
    assert [s.execution_id for s in client.recover().skipped] == [by_script]


def test_resume_and_replay_run_only_flows_the_command_loaded(
    planted: Planted, client: tether.Client, db_url: str
) -> None:
    by_module = craft(client, f"{planted.module}:agent", None)
    by_script = craft(client, "__main__:agent", str(planted.script))

    refused = tether_cli(db_url, planted.folder, "executions", "resume", by_module, "--wait")
    assert refused.returncode == 2, said(refused)
    assert f"add `--import {planted.module}`" in said(refused)
    refused = tether_cli(db_url, planted.folder, "executions", "resume", by_script, "--wait")
    assert refused.returncode == 2, said(refused)
    assert f"add `--script {planted.script}`" in said(refused)
    assert not planted.module_ran and not planted.script_ran
    assert client.get(by_module).status is Status.QUEUED

    # TETHER_IMPORTS loads the module; --script the script.
    resumed = tether_cli(
        db_url, planted.folder, "executions", "resume", by_module, "--wait",
        TETHER_IMPORTS=f"os.path, {planted.module}",
    )  # fmt: skip
    assert resumed.returncode == 0, said(resumed)
    assert resumed.stdout.strip().splitlines()[-1] == "DURABLE!"
    resumed = tether_cli(
        db_url, planted.folder, "executions", "resume", by_script, "--wait",
        "--script", str(planted.script),
    )  # fmt: skip
    assert resumed.returncode == 0, said(resumed)
    planted.forget()

    # A finished execution replayed: the same rule.
    replay = ["executions", "replay", by_module, "--from", "shout", "--wait"]
    refused = tether_cli(db_url, planted.folder, *replay)
    assert refused.returncode == 2, said(refused)
    assert f"add `--import {planted.module}`" in said(refused)
    assert not planted.module_ran
    assert [e.id for e in client.list()].count(by_module) == 1 and len(client.list()) == 2
    replayed = tether_cli(db_url, planted.folder, *replay, "--import", planted.module)
    assert replayed.returncode == 0, said(replayed)
    assert len(client.list()) == 3


def test_a_pyproject_tether_table_loads_the_flows_of_a_project(
    planted: Planted, client: tether.Client, db_url: str
) -> None:
    by_module = craft(client, f"{planted.module}:agent", None)
    project = planted.folder
    (project / "pyproject.toml").write_text(f'[tool.tether]\nimports = ["{planted.module}"]\n')
    below = project / "src" / "deeper"
    below.mkdir(parents=True)
    # Found from the working directory up, as the store is; the module from the project's root.
    resumed = tether_cli(db_url, below, "executions", "resume", by_module, "--wait")
    assert resumed.returncode == 0, said(resumed)
    assert client.get(by_module).result == "DURABLE!"


def test_configured_imports_that_are_wrong_are_clear_errors(
    planted: Planted, client: tether.Client, db_url: str
) -> None:
    execution_id = craft(client, f"{planted.module}:agent", None)
    bad = tether_cli(
        db_url, planted.folder, "executions", "resume", execution_id, TETHER_IMPORTS="no such"
    )
    assert bad.returncode == 2, said(bad)
    assert "TETHER_IMPORTS: 'no such' is not a module name" in said(bad)
    missing = tether_cli(
        db_url, planted.folder, "executions", "resume", execution_id, TETHER_IMPORTS="nowhere_x"
    )
    assert missing.returncode == 2 and "TETHER_IMPORTS nowhere_x: No module named" in said(missing)
    (planted.folder / "pyproject.toml").write_text("[tool.tether]\nimports = 'oops'\n")
    table = tether_cli(db_url, planted.folder, "executions", "recover")
    assert table.returncode == 2, said(table)
    assert "[tool.tether] imports in" in said(table) and "expected a list" in said(table)
    assert "Traceback" not in said(bad) + said(missing) + said(table)
    assert client.get(execution_id).status is Status.QUEUED and not planted.module_ran


def test_read_commands_import_nothing_even_with_imports_configured(
    planted: Planted, client: tether.Client, db_url: str
) -> None:
    execution_id = craft(client, f"{planted.module}:agent", str(planted.script))
    (planted.folder / "pyproject.toml").write_text(
        f'[tool.tether]\nimports = ["{planted.module}"]\n'
    )
    for args in (
        ["executions", "get", execution_id],
        ["executions", "get", execution_id, "--json"],
        ["executions", "list"],
        ["executions", "list", "--json"],
        ["executions", "waits"],
        ["executions", "logs", execution_id],
        ["memory", "list"],
    ):
        for env in ({}, {"TETHER_IMPORTS": planted.module}):
            done = tether_cli(db_url, planted.folder, *args, **env)
            assert done.returncode == 0, (args, said(done))
            assert not planted.module_ran and not planted.script_ran, args


def test_a_worker_leaves_flows_it_did_not_load_alone_without_claiming_them_again(
    planted: Planted, client: tether.Client, db_url: str
) -> None:
    (planted.folder / "other_module.py").write_text(OTHER)
    crafted = craft(client, f"{planted.module}:agent", str(planted.script))
    argv = ["-m", "tether", "worker", "--import", "other_module", "--poll", "0.01"]
    worker = subprocess.Popen(
        [sys.executable, *argv],
        env={**os.environ, "TETHER_DB": db_url, "PYTHONPATH": os.pathsep.join(sys.path)},
        cwd=str(planted.folder),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def warned() -> list[str]:
            return [w for w in client.get(crafted).warnings if "cannot run it" in w]

        (warning,) = retry_until(warned, what="the worker to say why it leaves the execution")
        assert f"add `--import {planted.module}`" in warning
        # The worker goes on polling and running what it loaded; the crafted one is not
        # claimed again.
        sys.path.insert(0, str(planted.folder))
        try:
            import other_module  # type: ignore[import-not-found]
        finally:
            sys.path.remove(str(planted.folder))
        for _ in range(3):
            assert other_module.other.enqueue("hi").result(timeout=30) == "hi"
        assert len(warned()) == 1
        record = client.get(crafted)
        assert record.status is Status.QUEUED and record.attempt <= 1
        assert not planted.module_ran and not planted.script_ran
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr

    by_script = craft(client, "__main__:agent", str(planted.script))
    loaded = spawn_python(
        ["-m", "tether", "worker", "--import", planted.module, "--script", str(planted.script),
         "--poll", "0.01"], db_url,
        stderr=subprocess.PIPE, PYTHONPATH=os.pathsep.join([str(planted.folder), *sys.path]),
    )  # fmt: skip
    try:
        assert client.handle(crafted).result(timeout=30) == "DURABLE!"
        assert client.handle(by_script).result(timeout=30) == "DURABLE!"
    finally:
        loaded.send_signal(signal.SIGTERM)
        loaded.communicate(timeout=30)
