"""What the `tether` command says about executions nobody runs, sleeps and waits, ids given
by a prefix, dates, and its version: shown on real processes killed with SIGKILL."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import tether
from helpers import TESTS, child_env, killed_mid_checkpoint, retry_until, run_child
from tether._core import config as _config
from tether.cli import app
from tether.store import ExecutionRow


def cli(db_url: str, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"TETHER_DB": db_url, "COLUMNS": "200"})


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, killed at teardown whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def _tether(db_url: str, output: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    with output.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "tether", *args],
            env=child_env(db_url, COLUMNS="200", PYTHONUNBUFFERED="1", **env),
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=str(TESTS),
        )


def test_version() -> None:
    shown = CliRunner().invoke(app, ["--version"])
    assert shown.exit_code == 0
    assert shown.output.strip() == f"tether {tether.__version__}"


def test_a_killed_execution_is_shown_as_nobody_running_it_with_what_to_do(
    db_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    gate = tmp_path / "gate"
    execution_id = killed_mid_checkpoint(db_url, gate, steps=1)

    listed = cli(db_url, "executions", "list")
    assert listed.exit_code == 0
    assert re.search(rf"{execution_id}\s.*running, nobody on it", listed.output)
    assert "tether executions resume ID" in listed.output
    got = " ".join(cli(db_url, "executions", "get", execution_id).output.split())
    assert "Nobody runs it: The process that ran it (pid" in got
    assert f"tether executions resume {execution_id}" in got
    as_json = json.loads(cli(db_url, "executions", "get", execution_id, "--json").stdout)
    assert "is gone" in as_json["attention"]

    # `watch` says so instead of spinning; a worker then takes it over and it finishes.
    output = tmp_path / "watch.txt"
    watch = _tether(db_url, output, "executions", "watch", execution_id)
    procs.append(watch)
    retry_until(lambda: "nobody runs it" in output.read_text(), what="watch to say so")
    gate.write_text("open\n")
    procs.append(
        _tether(
            db_url,
            tmp_path / "worker.txt",
            "worker",
            "--import",
            "approval_flows",
            "--poll",
            "0.01",
            GATE_FILE=str(gate),
        )
    )
    assert watch.wait(timeout=60) == 0, output.read_text()
    assert "succeeded" in output.read_text()
    assert cli(db_url, "executions", "get", execution_id, "--json").stdout.count("attention") == 0
    # The takeover is in the history, with the process that took it over.
    worker_pid = procs[-1].pid
    got = " ".join(cli(db_url, "executions", "get", execution_id).output.split())
    assert re.search(rf"takeover .*taken over by pid {worker_pid} on host \S+ \(attempt 2\): "
                     "the process that ran it stopped without ending it", got), got  # fmt: skip


def test_watch_explains_a_sleep_and_who_wakes_it(db_url: str) -> None:
    done = run_child(
        textwrap.dedent(
            """
            import time, cli_flows
            handle = cli_flows.napping.run(3600)
            while handle.status() != "waiting":
                time.sleep(0.01)
            print(handle.id)
            """
        ),
        db_url,
    )
    assert done.returncode == 0, done.stderr
    execution_id = done.stdout.split()[-1]
    watched = cli(db_url, "executions", "watch", execution_id)
    assert watched.exit_code == 0
    text = " ".join(watched.output.split())
    assert "sleeps (tether.sleep) until" in text and "from now" in text
    # The process that started it (and would have woken it) is gone: it says so.
    assert "no live process will pick it up" in text and "tether worker" in text
    line = json.loads(cli(db_url, "executions", "watch", execution_id, "--json").stdout)
    assert line["status"] == "waiting" and "no live process" in line["continues"]


def test_input_says_when_no_live_process_will_pick_the_execution_up(db_url: str) -> None:
    done = run_child(
        textwrap.dedent(
            """
            import time, cli_flows
            handle = cli_flows.approval.run("tides")
            while handle.status() != "waiting":
                time.sleep(0.01)
            print(handle.id)
            """
        ),
        db_url,
    )
    execution_id = done.stdout.split()[-1]
    given = cli(db_url, "executions", "input", execution_id, "--value", "true")
    assert given.exit_code == 0, given.output
    text = " ".join(given.output.split())
    assert "Input recorded for wait approve" in text
    assert "No live process will pick it up" in text
    assert f"tether executions resume {execution_id}" in text


def test_input_to_a_live_process_says_it_continues_there(db_url: str) -> None:
    import cli_flows

    handle = cli_flows.approval.run("tides")
    # The note of who continues it is recorded with the suspension: input given the moment
    # the execution waits hears who continues it.
    retry_until(lambda: handle.status() is tether.Status.WAITING, what="the wait")
    given = cli(db_url, "executions", "input", handle.id, "--value", "true", "--json")
    assert given.exit_code == 0, given.output
    assert json.loads(given.stdout)["continues"] == {
        "live": True,
        "message": "this process continues it",
    }
    assert handle.result(timeout=30) == "HELLO TIDES!"


def _rows(db_url: str, *ids: str) -> None:
    store = _config.store_for(db_url)
    now = time.time()
    for execution_id in ids:
        store.create_execution(
            ExecutionRow(
                id=execution_id,
                flow="greeting",
                import_path="cli_flows:greeting",
                script=None,
                args='{"args":[],"kwargs":{}}',
                status="queued",
                created_at=now,
                updated_at=now,
            )
        )


def test_every_command_that_takes_an_id_takes_a_unique_prefix(db_url: str) -> None:
    _rows(db_url, "abc123", "abc456")
    ambiguous = cli(db_url, "executions", "get", "abc")
    assert ambiguous.exit_code == 2
    assert "several execution ids (abc123, abc456)" in " ".join(ambiguous.output.split())
    unknown = cli(db_url, "executions", "get", "zzz")
    assert unknown.exit_code == 3 and "no execution zzz" in unknown.output
    for command in (
        ["get"],
        ["logs"],
        ["list", "--parent"],
        ["cancel"],
    ):
        done = cli(db_url, "executions", *command, "abc4")
        assert done.exit_code == 0, (command, done.output)
        assert "abc123" not in done.output
    assert tether.Client(db_url).get("abc456").status == "cancelled"
    assert "abc456" in cli(db_url, "executions", "get", "abc4").output
    refused = cli(db_url, "executions", "resume", "abc")
    assert refused.exit_code == 2 and "abc123" in refused.output
    missing = cli(db_url, "executions", "input", "abc1", "--value", "true")
    assert missing.exit_code == 3 and "execution abc123 has no pending wait" in missing.output


def test_list_shows_dates(db_url: str) -> None:
    import cli_flows

    cli_flows.greeting.run("x").result(timeout=30)
    listed = cli(db_url, "executions", "list")
    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", listed.output), listed.output


def test_suspend_and_wake_are_in_the_timeline_with_pid_and_host(
    db_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    done = run_child(
        textwrap.dedent(
            """
            import os, time, cli_flows
            handle = cli_flows.approval.run("tides")
            while handle.status() != "waiting":
                time.sleep(0.01)
            print(os.getpid(), handle.id)
            """
        ),
        db_url,
    )
    assert done.returncode == 0, done.stderr
    starter_pid, execution_id = done.stdout.split()[-2:]
    given = cli(db_url, "executions", "input", execution_id, "--value", "true", "--by", "ana")
    assert given.exit_code == 0, given.output
    worker = _tether(db_url, tmp_path / "worker.txt", "worker", "--import", "cli_flows",
                     "--poll", "0.01")  # fmt: skip
    procs.append(worker)
    client = tether.Client(db_url)
    retry_until(lambda: client.summary(execution_id).status.finished, what="the worker")
    kinds = [e.kind for e in client.get(execution_id).events if e.kind in ("suspend", "wake")]
    assert kinds == ["suspend", "wake"]
    got = " ".join(cli(db_url, "executions", "get", execution_id).output.split())
    assert f"suspended; pid {starter_pid} on " in got, got
    assert re.search(
        rf"wake .*woke in pid {worker.pid} on host \S+: input to 'approve' arrived from ana", got
    ), got


def _cli80(db_url: str, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"TETHER_DB": db_url, "COLUMNS": "80"})


def test_a_long_wait_name_is_printed_whole_at_80_columns_and_input_takes_it_by_name(
    db_url: str,
) -> None:
    import cli_flows

    first = cli_flows.long_named_wait.run("q3")
    second = cli_flows.long_named_wait.run("q4")
    for handle in (first, second):
        retry_until(lambda h=handle: h.status() == "waiting", what="the wait")
    listed = _cli80(db_url, "executions", "waits")
    assert listed.exit_code == 0
    assert listed.output.count(cli_flows.LONG_WAIT) == 2, listed.output
    assert "…" not in listed.output  # nothing cut
    got = _cli80(db_url, "executions", "get", first.id)
    assert cli_flows.LONG_WAIT in got.output, got.output
    given = _cli80(db_url, "executions", "input", first.id, "--name", cli_flows.LONG_WAIT,
                   "--value", "true")  # fmt: skip
    assert given.exit_code == 0, given.output
    assert first.result(timeout=30) == "True"
    # The old spelling still works, and says what to use instead.
    old = CliRunner().invoke(
        app,
        ["executions", "input", second.id, "--wait", cli_flows.LONG_WAIT, "--value", "false"],
        env={"TETHER_DB": db_url, "COLUMNS": "200"},
    )
    assert old.exit_code == 0, old.output
    assert "--wait NAME is deprecated" in old.output and "use --name NAME" in old.output
    assert second.result(timeout=30) == "False"
