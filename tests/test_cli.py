"""The `tether executions` commands, through Typer's CliRunner and through real processes.

Flows live in tests/cli_flows.py so that resume, retry and replay (in this process or a
child) can import them by their recorded path.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

import cli_flows
import tether
from helpers import TESTS, child_env, retry_until, run_cli
from tether import Status
from tether.cli import app
from tether.cli.executions import _parse_age
from tether.errors import ExecutionNotFound

COMMANDS = ["list", "get", "logs", "watch", "resume", "cancel", "retry", "recover", "replay",
            "prune", "waits", "input"]  # fmt: skip


@pytest.fixture(autouse=True)
def _store_exists(db_url: str) -> None:
    """The operating commands refuse a database that does not exist: make the test's."""
    tether.Client(db_url)


def test_a_database_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'typo' / 'tether.db'}"
    result = cli(missing, "executions", "list")
    assert result.exit_code == 2
    assert "no tether database at" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "typo").exists(), "nothing was created"


def cli(db_url: str, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"TETHER_DB": db_url, "COLUMNS": "200"})


def cli_json(db_url: str, *args: str) -> Any:
    result = cli(db_url, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def spawn_tether(db_url: str, output: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start `python -m tether ...` in the background, its stdout going to a file."""
    with output.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "tether", *args],
            env=child_env(db_url, COLUMNS="200", PYTHONUNBUFFERED="1"),
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=str(TESTS),
        )


def finished(client: tether.Client, flow: tether.Flow[Any, Any], *args: Any) -> str:
    """Run a flow to its end (success or failure) and return the execution id."""
    handle = flow.run(*args)
    with contextlib.suppress(tether.TetherError):
        handle.result(timeout=30)
    return handle.id


def waiting(client: tether.Client, topic: str = "tides") -> str:
    handle = cli_flows.approval.run(topic)
    retry_until(lambda: handle.status() is Status.WAITING, what="the approval wait")
    return handle.id


def assert_plain_error(result: Result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr, result.stderr


# --- help and usage ------------------------------------------------------------------------------


def test_every_command_has_help_a_newcomer_can_read() -> None:
    top = CliRunner().invoke(app, ["executions", "--help"])
    assert top.exit_code == 0
    assert "checkpoint" in top.stdout and "resumed after a crash" in top.stdout
    for command in COMMANDS:
        result = CliRunner().invoke(app, ["executions", command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "--db" in result.stdout and "--json" in result.stdout, command
        assert len(result.stdout.split("Options")[0]) > 120, f"{command}: no description"


def test_bad_arguments_are_usage_errors(db_url: str) -> None:
    assert cli(db_url, "executions", "list", "--status", "bogus").exit_code == 2
    assert cli(db_url, "executions", "list", "--limit", "0").exit_code == 2
    assert cli(db_url, "executions", "get").exit_code == 2  # no id
    assert cli(db_url, "executions", "replay", "some-id").exit_code == 2  # no --from
    assert cli(db_url, "executions", "frobnicate").exit_code == 2
    bad_db = cli(db_url, "executions", "list", "--db", "nonsense")
    assert_plain_error(bad_db, 2, "db must be a store URL")


def test_the_worker_command_explains_itself_and_refuses_bad_options(db_url: str) -> None:
    shown = CliRunner().invoke(app, ["worker", "--help"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    for option in ("--db", "--concurrency", "--import", "--queue", "--poll", "--grace"):
        assert option in shown.stdout, option
    assert "MODULE" in shown.stdout and "NAME" in shown.stdout
    assert cli(db_url, "worker", "--concurrency", "0").exit_code == 2
    assert cli(db_url, "worker", "--grace", "-1").exit_code == 2
    missing = cli(db_url, "worker", "--import", "no_such_module_here")
    assert missing.exit_code == 2 and "no_such_module_here" in missing.output


def test_worker_and_launcher_refuse_a_blank_queue_name(db_url: str) -> None:
    for command in ("worker", "launcher"):
        empty = cli(db_url, command, "--queue", "main", "--queue", " ")
        assert empty.exit_code == 2, (command, empty.output)
        assert "--queue" in empty.output and "a queue name is a non-empty string" in empty.output


def test_unknown_ids_exit_3_with_a_plain_message(db_url: str) -> None:
    for args in (["get"], ["logs"], ["logs", "--follow"], ["watch"], ["resume"], ["cancel"],
                 ["retry"], ["replay", "--from", "greet"]):  # fmt: skip
        result = cli(db_url, "executions", args[0], "no-such-id", *args[1:])
        assert_plain_error(result, 3, "no execution no-such-id")


def test_debug_shows_the_exception(db_url: str) -> None:
    result = CliRunner().invoke(app, ["--debug", "executions", "get", "nope", "--db", db_url])
    assert isinstance(result.exception, ExecutionNotFound)


# --- list and get ---------------------------------------------------------------------------------


def test_list_on_an_empty_database(db_url: str) -> None:
    result = cli(db_url, "executions", "list")
    assert result.exit_code == 0
    assert "No executions yet" in result.stdout
    assert cli_json(db_url, "executions", "list") == []


def test_list_shows_executions_newest_first_and_filters(client: tether.Client, db_url: str) -> None:
    ok = finished(client, cli_flows.greeting, "ada")
    bad = finished(client, cli_flows.broken, "widget")
    asking = waiting(client)
    table = cli(db_url, "executions", "list")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "flow", "status"]
    assert [line.split()[0] for line in lines[1:]] == [asking, bad, ok]
    assert "approve" in lines[1] and "waiting" in lines[1]
    assert "succeeded" in lines[3] and lines[3].split()[-1] == "2"  # checkpoints done

    listed = cli_json(db_url, "executions", "list")
    assert [r["id"] for r in listed] == [asking, bad, ok]
    assert listed[0]["pending_wait"] == "approve" and listed[2]["checkpoints_done"] == 2
    assert listed[2]["result"] == "HELLO ADA!"
    assert listed[1]["error"]["type"] == "ValueError"
    assert listed[2]["started_at"].endswith("+00:00")  # ISO, UTC

    only = cli_json(db_url, "executions", "list", "-s", "failed", "-s", "succeeded")
    assert [r["id"] for r in only] == [bad, ok]
    assert [r["id"] for r in cli_json(db_url, "executions", "list", "--flow", "broken")] == [bad]
    assert len(cli_json(db_url, "executions", "list", "--limit", "1")) == 1
    none = cli(db_url, "executions", "list", "--flow", "nothing-like-it")
    assert none.exit_code == 0 and "No executions match" in none.stdout


def test_get_shows_the_header_and_the_checkpoint_timeline(
    client: tether.Client, db_url: str
) -> None:
    execution_id = finished(client, cli_flows.greeting, "ada")
    result = cli(db_url, "executions", "get", execution_id)
    assert result.exit_code == 0, result.output
    text = result.stdout
    for expected in (execution_id, "greeting", "succeeded", "attempts", "duration",
                     "HELLO ADA!", "greet", "shout", "hello ada"):  # fmt: skip
        assert expected in text, expected
    assert text.index(" greet ") < text.index(" shout ")

    record = cli_json(db_url, "executions", "get", execution_id)
    assert record["id"] == execution_id and record["status"] == "succeeded"
    assert [(c["position"], c["name"], c["result"]) for c in record["checkpoints"]] == [
        ("0", "greet", "hello ada"),
        ("1", "shout", "HELLO ADA!"),
    ]
    assert record["args"] == {"args": ["ada"], "kwargs": {}}
    assert record["checkpoints"][0]["attempts"][0]["started_at"].endswith("+00:00")


def test_get_of_a_failed_execution_shows_the_error(client: tether.Client, db_url: str) -> None:
    execution_id = finished(client, cli_flows.broken, "widget")
    text = cli(db_url, "executions", "get", execution_id).stdout
    assert "failed" in text and "ValueError: widget is broken on purpose" in text
    record = cli_json(db_url, "executions", "get", execution_id)
    assert record["error"]["type"] == "ValueError"
    assert "Traceback" in record["error"]["traceback"]
    assert record["checkpoints"][1]["status"] == "failed"


def test_get_of_a_waiting_execution_shows_the_wait_in_place(
    client: tether.Client, db_url: str
) -> None:
    execution_id = waiting(client)
    text = cli(db_url, "executions", "get", execution_id).stdout
    lines = text.splitlines()
    (wait_line,) = [line for line in lines if "wait approve" in line]
    assert wait_line.split()[:4] == ["1", "wait", "approve", "pending"]
    assert "publish 'hello tides'?" in wait_line
    assert f"tether executions input {execution_id} --value true" in text

    client.input(execution_id, "approve", True, by="alice")
    assert client.handle(execution_id).result(timeout=30) == "HELLO TIDES!"
    text = cli(db_url, "executions", "get", execution_id).stdout
    (wait_line,) = [line for line in text.splitlines() if "wait approve" in line]
    assert "resolved" in wait_line and "true" in wait_line and "by alice" in wait_line
    record = cli_json(db_url, "executions", "get", execution_id)
    assert [(w["name"], w["status"], w["value"], w["resolved_by"]) for w in record["waits"]] == [
        ("approve", "resolved", True, "alice")
    ]


# --- logs ----------------------------------------------------------------------------------------


def test_logs_show_what_each_checkpoint_printed(client: tether.Client, db_url: str) -> None:
    execution_id = finished(client, cli_flows.greeting, "ada")
    result = cli(db_url, "executions", "logs", execution_id)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["#0", "greet", "stdout", "greeting", "ada"]
    assert ["#1", "shout", "stdout", "shouting", "hello", "ada"] in [x.split() for x in lines]
    assert any(
        x.split()[:3] == ["#1", "shout", "warning"] and "loud: hello ada" in x for x in lines
    )

    only = cli(db_url, "executions", "logs", execution_id, "--checkpoint", "shout").stdout
    assert "shouting hello ada" in only and "greeting" not in only
    assert "greeting ada" in cli(db_url, "executions", "logs", execution_id, "-c", "0").stdout

    records = cli_json(db_url, "executions", "logs", execution_id, "-c", "shout")
    assert [(r["checkpoint"], r["position"], r["stream"]) for r in records] == [
        ("shout", "1", "stdout"),
        ("shout", "1", "log"),
    ]
    assert records[1]["level"] == "warning" and records[1]["logger"] == "cli_flows"

    unknown = cli(db_url, "executions", "logs", execution_id, "-c", "nope")
    assert_plain_error(unknown, 2, "no checkpoint named 'nope'")


def test_logs_of_an_execution_that_printed_nothing(client: tether.Client, db_url: str) -> None:
    execution_id = waiting(client)
    client.cancel(execution_id)
    result = cli(db_url, "executions", "logs", execution_id, "-c", "shout")
    assert_plain_error(result, 2, "no checkpoint named 'shout'")
    assert "greeting tides" in cli(db_url, "executions", "logs", execution_id).stdout


def test_logs_follow_prints_output_as_it_comes_and_stops_at_the_end(
    client: tether.Client, db_url: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    handle = cli_flows.gated.run(str(gate))
    output = tmp_path / "follow.txt"
    follower = spawn_tether(db_url, output, "executions", "logs", handle.id, "--follow")
    try:
        retry_until(lambda: "greeting gate" in output.read_text(), what="the first output")
        assert follower.poll() is None, "--follow ended while the execution still runs"
        gate.touch()
        assert follower.wait(timeout=30) == 0
    finally:
        follower.kill()
    lines = output.read_text().splitlines()
    assert [line.split()[:3] for line in lines] == [["#0", "greet", "stdout"],
                                                   ["#1", "through_gate", "stdout"],
                                                   ["#2", "greet", "stdout"]]  # fmt: skip
    # --follow on a finished execution prints what there is and returns; --json: one per line
    follow = cli(db_url, "executions", "logs", handle.id, "--follow", "--json")
    assert follow.exit_code == 0
    assert [json.loads(line)["message"] for line in follow.stdout.splitlines()] == [
        "greeting gate\n",
        "the gate opened\n",
        "greeting after\n",
    ]


# --- watch ---------------------------------------------------------------------------------------


def test_watch_ends_by_itself_on_a_finished_execution(client: tether.Client, db_url: str) -> None:
    execution_id = finished(client, cli_flows.greeting, "ada")
    result = cli(db_url, "executions", "watch", execution_id)
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.stdout and "HELLO ADA!" in result.stdout
    states = [json.loads(line) for line in cli(db_url, "executions", "watch", execution_id,
                                                "--json").stdout.splitlines()]  # fmt: skip
    assert len(states) == 1
    assert states[0]["status"] == "succeeded" and states[0]["result"] == "HELLO ADA!"
    failed = cli(db_url, "executions", "watch", finished(client, cli_flows.broken, "x"))
    assert failed.exit_code == 1 and "broken on purpose" in failed.stdout


def test_watch_ends_by_itself_on_a_waiting_execution(client: tether.Client, db_url: str) -> None:
    execution_id = waiting(client)
    result = cli(db_url, "executions", "watch", execution_id)
    assert result.exit_code == 0, result.output
    assert "wait approve" in result.stdout and "Waiting for input 'approve'" in result.stdout
    (state,) = [json.loads(line) for line in cli(db_url, "executions", "watch", execution_id,
                                                  "--json").stdout.splitlines()]  # fmt: skip
    assert state["status"] == "waiting" and state["pending_waits"] == ["approve"]


def test_watch_follows_a_running_execution_to_its_end(
    client: tether.Client, db_url: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    handle = cli_flows.gated.run(str(gate))
    output = tmp_path / "watch.txt"
    watcher = spawn_tether(db_url, output, "executions", "watch", handle.id, "--json")
    try:
        first = retry_until(lambda: output.read_text().splitlines(), what="the first state")
        assert json.loads(first[0])["status"] in ("queued", "running")

        # Meanwhile `get` shows the call in flight (published by the executor's heartbeat).
        def in_flight() -> str | None:
            text = cli(db_url, "executions", "get", handle.id).stdout
            return text if "running now" in text else None

        shown = retry_until(in_flight, what="the call in flight")
        (line,) = [x for x in shown.splitlines() if "through_gate" in x]
        assert line.split()[:3] == ["1", "through_gate", "running"]
        assert (
            cli_json(db_url, "executions", "get", handle.id)["running"][0]["name"] == "through_gate"
        )
        gate.touch()
        assert watcher.wait(timeout=30) == 0
    finally:
        watcher.kill()
    states = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(states) >= 2
    assert states[-1]["status"] == "succeeded" and states[-1]["result"] == "through"
    assert states[-1]["checkpoints_done"] == 3


# --- resume, retry, cancel, recover -------------------------------------------------------------


def test_resume_runs_an_unfinished_execution(client: tether.Client, db_url: str) -> None:
    queued = cli_flows.greeting.enqueue("ada")
    result = cli(db_url, "executions", "resume", queued.id, "--wait")
    assert result.exit_code == 0, result.output
    assert queued.id in result.stdout and result.stdout.splitlines()[-1] == "HELLO ADA!"

    other = cli_flows.greeting.enqueue("bob")
    record = cli_json(db_url, "executions", "resume", other.id)
    assert record["id"] == other.id and record["status"] == "succeeded"
    assert record["result"] == "HELLO BOB!"

    again = cli(db_url, "executions", "resume", other.id)
    assert_plain_error(again, 1, "already succeeded")


def test_ctrl_c_hands_back_what_runs_here(
    client: tether.Client, db_url: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    queued = cli_flows.gated.enqueue(str(gate))
    output = tmp_path / "resume.txt"
    resumer = spawn_tether(
        db_url, output, "executions", "resume", queued.id, "--wait", "--import", "cli_flows"
    )
    try:
        # Ctrl-C once the second step runs (published by the heartbeat). The first step's
        # output comes before its boundary: a signal sent on seeing it can land there on a
        # loaded machine, and the execution is then handed back after one step, not two.
        def gate_running() -> bool:
            record = cli_json(db_url, "executions", "get", queued.id)
            return [call["name"] for call in record["running"]] == ["through_gate"]

        retry_until(gate_running, what="the second step")
        resumer.send_signal(signal.SIGINT)
        retry_until(lambda: "interrupted" in output.read_text(), what="the interrupt")
        gate.touch()  # the step in flight finishes; the next boundary hands the execution back
        assert resumer.wait(timeout=30) == 130
    finally:
        resumer.kill()
    assert "stays queued" in output.read_text() and "Traceback" not in output.read_text()
    record = client.get(queued.id)
    assert record.status is Status.QUEUED and len(record.checkpoints) == 2
    resumed = cli(db_url, "executions", "resume", queued.id, "--wait")
    assert resumed.exit_code == 0 and resumed.stdout.splitlines()[-1] == "through"


def test_retry_runs_a_failed_execution_again(
    client: tether.Client, db_url: str, tmp_path: Path
) -> None:
    execution_id = finished(client, cli_flows.fails_once, str(tmp_path / "flag"))
    assert client.get(execution_id).status is Status.FAILED
    result = cli(db_url, "executions", "retry", execution_id, "--wait")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "hello retry; recovered"
    record = client.get(execution_id)
    assert record.status is Status.SUCCEEDED and record.attempt == 2
    assert [cp.status for cp in record.checkpoints] == ["succeeded", "succeeded"]

    second = finished(client, cli_flows.fails_once, str(tmp_path / "flag2"))
    retried = cli_json(db_url, "executions", "retry", second, "--wait")
    assert retried["status"] == "succeeded" and retried["result"] == "hello retry; recovered"

    refused = cli(db_url, "executions", "retry", execution_id)
    assert_plain_error(refused, 1, "only a failed execution can be retried")


def test_retry_with_wait_exits_1_when_it_fails_again(client: tether.Client, db_url: str) -> None:
    execution_id = finished(client, cli_flows.broken, "widget")
    result = cli(db_url, "executions", "retry", execution_id, "--wait")
    assert_plain_error(result, 1, "failed: ValueError: widget is broken on purpose")
    record = cli(db_url, "executions", "retry", execution_id, "--wait", "--json")
    assert record.exit_code == 1
    assert json.loads(record.stdout)["error"]["type"] == "ValueError"


def test_cancel(client: tether.Client, db_url: str, tmp_path: Path) -> None:
    execution_id = waiting(client)
    result = cli(db_url, "executions", "cancel", execution_id)
    assert result.exit_code == 0, result.output
    assert "cancelled" in result.stdout
    assert client.get(execution_id).status is Status.CANCELLED
    assert cli_json(db_url, "executions", "cancel", execution_id) == {
        "id": execution_id,
        "status": "cancelled",
        "cancelled": True,
    }
    done = finished(client, cli_flows.greeting, "ada")
    assert_plain_error(cli(db_url, "executions", "cancel", done), 1, "already succeeded")

    gate = tmp_path / "gate"
    running = cli_flows.gated.run(str(gate))
    retry_until(lambda: client.get(running.id).checkpoints, what="the first step")
    requested = cli(db_url, "executions", "cancel", running.id)
    assert requested.exit_code == 0 and "stops at its next checkpoint boundary" in requested.stdout
    gate.touch()
    with pytest.raises(tether.ExecutionCancelled):
        running.result(timeout=30)


def test_recover_runs_stranded_executions(client: tether.Client, db_url: str) -> None:
    result = cli(db_url, "executions", "recover")
    assert result.exit_code == 0 and "Nothing to recover" in result.stdout
    assert cli_json(db_url, "executions", "recover") == []

    first = cli_flows.greeting.enqueue("ada")
    result = cli(db_url, "executions", "recover")
    assert result.exit_code == 0, result.output
    assert "Recovered 1" in result.stdout and first.id in result.stdout
    assert client.get(first.id).result == "HELLO ADA!"

    second = cli_flows.greeting.enqueue("bob")
    (record,) = cli_json(db_url, "executions", "recover")
    assert record["id"] == second.id and record["result"] == "HELLO BOB!"


def test_recover_exits_1_when_what_it_resumed_fails(client: tether.Client, db_url: str) -> None:
    failing = cli_flows.broken.enqueue("the pump")
    result = cli(db_url, "executions", "recover")
    assert result.exit_code == 1, result.output
    assert failing.id in result.stdout and "failed" in result.stdout
    assert f"1 recovered execution(s) did not succeed: {failing.id} (failed)" in result.stderr
    assert "Traceback" not in result.output


def test_usage_lines_and_flags_are_plain() -> None:
    shown = CliRunner().invoke(app, ["executions", "get", "--help"], terminal_width=200)
    assert "Usage: tether executions get [OPTIONS] ID" in shown.stdout
    listed = CliRunner().invoke(app, ["memory", "list", "--help"], terminal_width=200)
    assert "Usage: tether memory list [OPTIONS] [PREFIX]" in listed.stdout
    for args in (["--help"], ["executions", "--help"], ["executions", "list", "--help"],
                 ["worker", "--help"]):  # fmt: skip
        text = CliRunner().invoke(app, args, terminal_width=200).stdout
        assert "<bool>" not in text and "{" not in text.split("\n\n")[0], args


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, (*path, name))
    return paths


def test_every_option_of_every_command_names_what_it_takes() -> None:
    """Typer's type names (`<str>`, `<int range>`) say nothing; every option shows a
    metavar such as ID, NAME, N, SECONDS or JSON instead."""
    paths = _command_paths(typer.main.get_command(app))
    assert ("executions", "input") in paths and ("memory", "set") in paths and ("worker",) in paths
    for path in paths:
        shown = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
        assert shown.exit_code == 0, (path, shown.output)
        for vague in ("<str>", "<int", "<float", "<bool>", "<path>", "<text>", "<integer"):
            assert vague not in shown.stdout, (path, vague, shown.stdout)
    given = CliRunner().invoke(app, ["executions", "input", "--help"], terminal_width=200)
    assert re.search(r"--value\s+JSON\s", given.stdout), given.stdout


def test_waits_uses_the_plain_columns_of_list(client: tether.Client, db_url: str) -> None:
    execution_id = waiting(client)
    table = cli(db_url, "executions", "waits").stdout
    listed = cli(db_url, "executions", "list").stdout
    for text in (table, listed):
        assert not set(text) & set("│─┃━╭╮╰╯┏┓┗┛"), text
    header = table.splitlines()[0].split()
    assert header == ["execution", "flow", "wait", "question", "expects", "deadline", "since"]
    assert execution_id in table


def test_a_finished_sleep_shows_as_slept_and_copies_as_copied(
    client: tether.Client, db_url: str
) -> None:
    source = finished(client, cli_flows.napping, 0.0)
    shown = cli(db_url, "executions", "get", source).stdout
    assert "slept" in shown and "timed_out" not in shown
    fork = client.replay(source, from_="shout")
    fork.result(timeout=30)
    record = cli_json(db_url, "executions", "get", fork.id)
    assert [(c["name"], c["copied_from"]) for c in record["checkpoints"]] == [
        ("greet", source), ("shout", None),
    ]  # fmt: skip
    assert [(w["status"], w["copied_from"]) for w in record["waits"]] == [("slept", source)]
    lines = cli(db_url, "executions", "get", fork.id).stdout.splitlines()
    (greet,) = [line for line in lines if " greet " in f" {line} "]
    assert "(copied)" in greet
    (shout,) = [line for line in lines if " shout " in f" {line} "]
    assert "(copied)" not in shout
    (sleep,) = [line for line in lines if " sleep " in f" {line} "]
    assert "slept (copied)" in sleep and " - " in sleep, sleep  # no duration: it ran there
    source_lines = cli(db_url, "executions", "get", source).stdout.splitlines()
    (slept,) = [line for line in source_lines if " sleep " in f" {line} "]
    assert "(copied)" not in slept


def test_a_copied_wait_is_marked_copied_without_the_sources_duration(
    client: tether.Client, db_url: str
) -> None:
    source = waiting(client)
    client.input(source, "approve", True, by="ada")
    assert client.handle(source).result(timeout=30) == "HELLO TIDES!"
    fork = client.replay(source, from_="shout")
    fork.result(timeout=30)
    (wait,) = client.get(fork.id).waits
    assert (wait.name, wait.status, wait.copied_from, wait.metadata) == (
        "approve", "resolved", source, {},
    )  # fmt: skip
    assert client.get(source).waits[0].copied_from is None
    lines = cli(db_url, "executions", "get", fork.id).stdout.splitlines()
    (row,) = [line for line in lines if "wait approve" in line]
    assert "resolved (copied)" in row and " - " in row and "by ada" in row, row
    assert cli_json(db_url, "executions", "get", fork.id)["waits"][0]["copied_from"] == source


# --- replay --------------------------------------------------------------------------------------


def test_replay_with_an_override(client: tether.Client, db_url: str) -> None:
    source = finished(client, cli_flows.greeting, "ada")
    result = cli(db_url, "executions", "replay", source, "--from", "shout",
                 "--override", 'greet="hi there"', "--wait")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "HI THERE!"
    new = client.list(limit=1)[0]
    assert new.id != source and new.replay_of == source and new.id in result.stdout
    text = cli(db_url, "executions", "get", new.id).stdout
    assert f"replay of  {source}" in text and "override → hi there" in text

    failed = cli(db_url, "executions", "replay", source, "--from", "1",
                 "-o", 'greet={"a": [1, 2]}', "--wait", "--json")  # fmt: skip
    assert failed.exit_code == 1, "--wait: exit 1 when the new execution fails"
    record = json.loads(failed.stdout)
    assert record["replay_of"] == source and record["status"] == "failed"  # shout got a dict
    assert record["error"]["type"] == "AttributeError"


def test_replay_with_new_arguments(client: tether.Client, db_url: str) -> None:
    source = finished(client, cli_flows.greeting, "ada")
    record = cli_json(db_url, "executions", "replay", source, "--from", "greet",
                      "--args", '["bob"]', "--wait")  # fmt: skip
    assert record["result"] == "HELLO BOB!" and record["replay_of"] == source
    record = cli_json(db_url, "executions", "replay", source, "--from", "greet",
                      "--args", '{"name": "cy"}', "--wait")  # fmt: skip
    assert record["result"] == "HELLO CY!"
    assert client.get(source).result == "HELLO ADA!"  # the source is untouched

    # Forked after greet: its recorded result is kept, and the changed argument is a warning.
    record = cli_json(db_url, "executions", "replay", source, "--from", "shout",
                      "--args", '["dee"]', "--wait")  # fmt: skip
    assert record["result"] == "HELLO ADA!"
    text = cli(db_url, "executions", "get", record["id"]).stdout
    (warning,) = [line for line in text.splitlines() if line.startswith("warnings")]
    assert "'greet' at position 0 was called with different arguments" in warning
    assert "loud" not in text, "captured logging warnings belong to `logs`, not to warnings"
    assert len(cli_json(db_url, "executions", "get", record["id"])["warnings"]) == 1


def test_replay_queued_for_a_worker_runs_on_recover(client: tether.Client, db_url: str) -> None:
    source = finished(client, cli_flows.greeting, "ada")
    record = cli_json(db_url, "executions", "replay", source, "--from", "shout", "--queue")
    assert record["status"] == "queued"
    assert tether._core.config.settings().executor, "--queue leaves the process setting alone"
    (recovered,) = cli_json(db_url, "executions", "recover")
    assert recovered["id"] == record["id"] and recovered["result"] == "HELLO ADA!"


def test_replay_bad_arguments_exit_2_saying_the_expected_form(
    client: tether.Client, db_url: str
) -> None:
    source = finished(client, cli_flows.greeting, "ada")
    replay = ["executions", "replay", source, "--from", "shout"]
    for bad in ("greet", "=1", "greet=hi there", "greet="):
        result = cli(db_url, *replay, "--override", bad)
        assert result.exit_code == 2, (bad, result.output)
        assert "NAME=JSON" in result.stderr and "Traceback" not in result.output
    assert "not valid JSON" in cli(db_url, *replay, "--override", "greet=hi").stderr
    for bad in ("bob", '"bob"', "3"):
        result = cli(db_url, *replay, "--args", bad)
        assert result.exit_code == 2 and "JSON list" in result.stderr, (bad, result.output)
    unknown = cli(db_url, "executions", "replay", source, "--from", "nope")
    assert_plain_error(unknown, 2, "no checkpoint named 'nope'", "greet", "shout")
    assert [r.id for r in client.list()] == [source], "nothing was started"


def test_replay_from_a_wait_asks_again(client: tether.Client, db_url: str) -> None:
    source = waiting(client)
    client.input(source, "approve", True)
    assert client.handle(source).result(timeout=30) == "HELLO TIDES!"
    for selector in ("approve", "1"):
        result = cli(db_url, "executions", "replay", source, "--from", selector)
        assert result.exit_code == 0, result.output
        assert "approve" in result.stdout  # the input hint of the wait asked again
        fork = client.list(status=[Status.WAITING])[0]
        assert fork.replay_of == source
        record = client.get(fork.id)
        assert [(c.name, c.copied_from) for c in record.checkpoints] == [("greet", source)]
        assert [(w.name, w.status) for w in record.waits] == [("approve", "pending")]
        client.cancel(fork.id)
    unknown = cli(db_url, "executions", "replay", source, "--from", "2.5")
    assert_plain_error(unknown, 2, "no checkpoint call at position 2.5 and no wait there")
    assert "waits: wait approve (position 1)" in unknown.stderr


def test_waits_and_input(client: tether.Client, db_url: str) -> None:
    empty = cli(db_url, "executions", "waits")
    assert empty.exit_code == 0 and "No pending waits" in empty.stdout
    execution_id = waiting(client)
    table = cli(db_url, "executions", "waits").stdout
    assert execution_id in table and "approve" in table and "boolean" in table
    (wait,) = cli_json(db_url, "executions", "waits")
    assert (wait["execution_id"], wait["name"], wait["json_schema"]) == (
        execution_id, "approve", {"type": "boolean"},
    )  # fmt: skip
    bad = cli(db_url, "executions", "input", execution_id, "--value", '"maybe"')
    assert_plain_error(bad, 1, "does not match its schema")
    result = cli(db_url, "executions", "input", execution_id, "--value", "true", "--by", "bo",
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    # This process runs the flow too: what it prints as it resumes, in its own thread, goes to
    # the process's stdout, which CliRunner holds at that moment. The JSON is the rest.
    given = json.JSONDecoder().raw_decode(result.stdout, result.stdout.index("{"))[0]
    assert given["status"] == "resolved" and given["value"] is True and given["resolved_by"] == "bo"
    assert client.handle(execution_id).result(timeout=30) == "HELLO TIDES!"


def test_input_that_is_not_json_says_how_to_quote_a_string(
    client: tether.Client, db_url: str
) -> None:
    handle = cli_flows.choosing.run("left or right?")
    retry_until(lambda: handle.status() is Status.WAITING, what="the wait for a side")
    bare = cli(db_url, "executions", "input", handle.id, "--value", "right")
    assert_plain_error(bare, 2, "not valid JSON", "a string needs JSON quotes")
    assert "--value '\"right\"'" in bare.stderr, bare.stderr
    assert "No input was recorded" in bare.stderr
    (pending,) = client.pending_waits()
    assert pending.execution_id == handle.id and pending.name == "side"
    given = cli(db_url, "executions", "input", handle.id, "--value", '"right"')
    assert given.exit_code == 0, given.output
    assert handle.result(timeout=30) == "right"


# --- prune ---------------------------------------------------------------------------------------


def test_prune_counts_first_and_deletes_only_with_yes(client: tether.Client, db_url: str) -> None:
    kept = waiting(client)
    done = [finished(client, cli_flows.greeting, name) for name in ("a", "b")]
    done.append(finished(client, cli_flows.broken, "c"))

    nothing = cli(db_url, "executions", "prune", "--older-than", "30d")
    assert nothing.exit_code == 0 and "0 executions finished more than 30d ago" in nothing.stdout

    dry = cli(db_url, "executions", "prune", "--older-than", "0s")
    assert dry.exit_code == 0, dry.output
    assert (
        "3 executions finished more than 0s ago" in dry.stdout and "Nothing deleted" in dry.stdout
    )
    assert len(client.list()) == 4
    assert cli_json(db_url, "executions", "prune", "--older-than", "0s") == {
        "older_than_seconds": 0.0, "statuses": None, "matched": 3, "deleted": 0,
    }  # fmt: skip

    failed = cli_json(db_url, "executions", "prune", "--older-than", "0s", "-s", "failed", "--yes")
    assert failed["matched"] == 1 and failed["deleted"] == 1
    yes = cli(db_url, "executions", "prune", "--older-than", "0s", "--yes")
    assert yes.exit_code == 0 and "Deleted 2" in yes.stdout
    assert [r.id for r in client.list()] == [kept]
    assert_plain_error(cli(db_url, "executions", "get", done[0]), 3, "no execution")


def test_prune_asks_before_deleting_on_a_terminal(
    client: tether.Client, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished(client, cli_flows.greeting, "ada")
    runner = CliRunner()
    monkeypatch.setattr("tether.cli.executions._stdin_is_terminal", lambda: True)
    no = runner.invoke(app, ["executions", "prune", "--older-than", "0s"], input="n\n")
    assert no.exit_code == 0 and "Nothing deleted" in no.stdout
    assert len(client.list()) == 1
    yes = runner.invoke(app, ["executions", "prune", "--older-than", "0s"], input="y\n")
    assert yes.exit_code == 0 and "Deleted 1" in yes.stdout
    assert client.list() == []


def test_prune_rejects_bad_ages_and_unfinished_statuses(db_url: str) -> None:
    for bad in ("30", "30 days", "d", "-1d", "", "1.5x"):
        result = cli(db_url, "executions", "prune", "--older-than", bad)
        assert result.exit_code == 2, (bad, result.output)
        assert "30d, 12h, 15m, 90s or 2w" in result.stderr
    running = cli(db_url, "executions", "prune", "--older-than", "1d", "-s", "running")
    assert_plain_error(running, 2, "finished executions only")
    assert cli(db_url, "executions", "prune").exit_code == 2  # --older-than is required


def test_ages() -> None:
    assert _parse_age("90s") == 90
    assert _parse_age("15m") == 900
    assert _parse_age("12h") == 12 * 3600
    assert _parse_age("30d") == 30 * 86400
    assert _parse_age("2w") == 14 * 86400
    assert _parse_age("1d12h") == 36 * 3600
    assert _parse_age("1.5h") == 5400


# --- real processes ------------------------------------------------------------------------------


def test_in_a_real_process_errors_are_plain_and_debug_shows_tracebacks(db_url: str) -> None:
    empty = run_cli(db_url, "executions", "list", "--json")
    assert empty.returncode == 0 and json.loads(empty.stdout) == []
    missing = run_cli(db_url, "executions", "get", "nope")
    assert missing.returncode == 3
    assert "no execution nope" in missing.stderr and "Traceback" not in missing.stderr
    debug = run_cli(db_url, "--debug", "executions", "get", "nope")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "ExecutionNotFound" in debug.stderr
    usage = run_cli(db_url, "executions", "prune", "--older-than", "soon")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


def test_in_a_real_process_replay_and_get(client: tether.Client, db_url: str) -> None:
    source = finished(client, cli_flows.greeting, "ada")
    replayed = run_cli(db_url, "executions", "replay", source, "--from", "shout", "--import",
                       "cli_flows", "--override", 'greet="from a child"', "--wait",
                       "--json")  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    record = json.loads(replayed.stdout)  # what the flow printed went to stderr
    assert record["result"] == "FROM A CHILD!" and record["replay_of"] == source
    assert "shouting from a child" in replayed.stderr
    shown = run_cli(db_url, "executions", "get", record["id"])
    assert shown.returncode == 0 and "override → from a child" in shown.stdout
