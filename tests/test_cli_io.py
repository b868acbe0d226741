"""What the `tether` command reads and how it exits: `--value -` (stdin) and `--value @FILE`
for `executions input` and `memory set`, and one exit code per class of outcome, the same
for every command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner, Result

import cli_flows
import tether
from helpers import TESTS, child_env, retry_until
from tether import Status, memory
from tether.cli import app

BIG = 1024 * 1024  # far past what one argv string may hold (128 KiB on Linux)


def cli(db_url: str, *args: str, stdin: str | bytes | None = None) -> Result:
    return CliRunner().invoke(
        app, list(args), input=stdin, env={"TETHER_DB": db_url, "COLUMNS": "200"}
    )


def waiting_for_a_side(client: tether.Client) -> tether.Handle[str]:
    handle = cli_flows.choosing.run("left or right?")
    retry_until(lambda: handle.status() is Status.WAITING, what="the wait for a side")
    return handle


def assert_exit(result: Result, code: int, *words: str) -> None:
    assert result.exit_code == code, (code, result.output)
    assert "Traceback" not in result.output
    # Typer's error box wraps long messages: compare the words, not the lines.
    flat = " ".join(re.sub("[│╭╮╰╯─]", " ", result.stderr).split())
    for word in words:
        assert word in flat, flat


# --- input from a file and from stdin -------------------------------------------------------


def test_input_from_a_file_larger_than_any_argument(
    client: tether.Client, db_url: str, tmp_path: Path
) -> None:
    handle = waiting_for_a_side(client)
    answer = "left " * (BIG // 5)
    given = tmp_path / "answer.json"
    given.write_text(json.dumps(answer))
    result = cli(db_url, "executions", "input", handle.id, "--value", f"@{given}")
    assert result.exit_code == 0, result.output
    assert handle.result(timeout=30) == answer


def test_input_from_stdin_in_a_real_process(
    client: tether.Client, db_url: str, tmp_path: Path
) -> None:
    handle = waiting_for_a_side(client)
    answer = "right " * (BIG // 6)
    piped = subprocess.run(
        [sys.executable, "-m", "tether", "executions", "input", handle.id, "--value", "-"],
        input=json.dumps(answer),
        env=child_env(db_url),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(TESTS),
    )
    assert piped.returncode == 0, piped.stderr
    assert handle.result(timeout=30) == answer


def test_a_string_that_starts_with_at_is_given_in_json_quotes(
    client: tether.Client, db_url: str, tmp_path: Path
) -> None:
    handle = waiting_for_a_side(client)
    missing = cli(db_url, "executions", "input", handle.id, "--value", "@ada")
    assert_exit(missing, 2, "cannot read ada", "No such file", "'\"@ada\"'", "No input")
    empty = cli(db_url, "executions", "input", handle.id, "--value", "@")
    assert_exit(empty, 2, "needs a file name")
    (tmp_path / "dir").mkdir()
    a_directory = cli(db_url, "executions", "input", handle.id, "--value", f"@{tmp_path / 'dir'}")
    assert_exit(a_directory, 2, "cannot read")
    (pending,) = client.pending_waits()
    assert pending.execution_id == handle.id, "nothing was recorded by the refusals"
    literal = cli(db_url, "executions", "input", handle.id, "--value", '"@ada"')
    assert literal.exit_code == 0, literal.output
    assert handle.result(timeout=30) == "@ada"


def test_a_file_or_stdin_that_is_not_json_names_where_it_came_from(
    client: tether.Client, db_url: str, tmp_path: Path
) -> None:
    handle = waiting_for_a_side(client)
    bad = tmp_path / "bad.json"
    bad.write_text("left")
    from_file = cli(db_url, "executions", "input", handle.id, "--value", f"@{bad}")
    assert_exit(from_file, 2, f"{bad} is not valid JSON", "No input was recorded")
    from_stdin = cli(db_url, "executions", "input", handle.id, "--value", "-", stdin="{oops")
    assert_exit(from_stdin, 2, "stdin is not valid JSON")
    binary = cli(db_url, "executions", "input", handle.id, "--value", "-", stdin=b"\xff\xfe")
    assert_exit(binary, 2, "not UTF-8")
    assert [w.execution_id for w in client.pending_waits()] == [handle.id]


def test_input_over_the_limit_is_refused_before_it_is_read_whole(
    client: tether.Client, db_url: str, tmp_path: Path
) -> None:
    handle = waiting_for_a_side(client)
    tether.configure(max_input_bytes=1000)
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps("x" * 5000))
    refused = cli(db_url, "executions", "input", handle.id, "--value", f"@{huge}")
    assert_exit(refused, 2, "larger than the limit of 1,000 bytes", "No input was recorded")
    piped = cli(db_url, "executions", "input", handle.id, "--value", "-", stdin=huge.read_text())
    assert_exit(piped, 2, "larger than the limit")
    assert [w.execution_id for w in client.pending_waits()] == [handle.id]


def test_memory_set_reads_a_file_or_stdin(db_url: str, tmp_path: Path) -> None:
    notes = {"lines": ["n" * 100] * (BIG // 100)}
    given = tmp_path / "notes.json"
    given.write_text(json.dumps(notes))
    stored = cli(db_url, "memory", "set", "notes", "-n", "ada", "--value", f"@{given}")
    assert stored.exit_code == 0, stored.output
    assert memory.get("notes", namespace="ada") == notes
    dashed = cli(db_url, "memory", "set", "theme", "-n", "ada", "--value", "-", stdin='"dark"')
    assert dashed.exit_code == 0, dashed.output
    piped = cli(db_url, "memory", "set", "mode", "-n", "ada", stdin="[1, 2]")
    assert piped.exit_code == 0, piped.output
    assert (memory.get("theme", namespace="ada"), memory.get("mode", namespace="ada")) == (
        "dark",
        [1, 2],
    )
    missing = cli(db_url, "memory", "set", "who", "-n", "ada", "--value", "@alice")
    assert_exit(missing, 2, "cannot read alice", "'\"@alice\"'", "Nothing was stored")
    literal = cli(db_url, "memory", "set", "who", "-n", "ada", "--value", '"@alice"')
    assert literal.exit_code == 0, literal.output
    assert memory.get("who", namespace="ada") == "@alice"


# --- exit codes -------------------------------------------------------------------------------


def test_each_class_of_outcome_has_its_exit_code_across_commands(
    client: tether.Client, db_url: str, tmp_path: Path
) -> None:
    done = cli_flows.greeting.run("ada")
    done.result(timeout=30)
    handle = waiting_for_a_side(client)
    memory.set("k", 1, namespace="n")
    ok = [
        ("executions", "get", done.id),
        ("executions", "list"),
        ("executions", "waits"),
        ("memory", "get", "k", "-n", "n"),
    ]
    for args in ok:
        assert cli(db_url, *args).exit_code == 0, args
    failed = [  # ran, and failed or was refused
        ("executions", "cancel", done.id),
        ("executions", "retry", done.id),
        ("executions", "input", handle.id, "--value", "3"),  # the schema wants a string
        ("executions", "input", done.id, "--value", '"x"'),  # finished: takes no input
        ("memory", "set", "k", "-n", "n", "--value", "2", "--if-version", "0"),
    ]
    usage = [  # the command itself is wrong
        ("executions", "list", "--status", "bogus"),
        ("executions", "input", handle.id, "--value", "left"),  # not JSON
        ("executions", "input", handle.id, "--value", "@no-such-file.json"),
        ("memory", "set", "k", "-n", "n", "--value", "{oops"),
        ("memory", "get", "k"),  # no scope
        ("executions", "list", "--db", f"sqlite:///{tmp_path / 'typo' / 'tether.db'}"),
    ]
    not_found = [
        ("executions", "get", "no-such-id"),
        ("executions", "cancel", "no-such-id"),
        ("executions", "input", "no-such-id", "--value", "true"),
        ("executions", "input", handle.id, "--name", "other", "--value", '"x"'),
        ("memory", "get", "nope", "-n", "n"),
        ("memory", "get", "k", "-n", "n", "--version", "9"),
        ("memory", "delete", "nope", "-n", "n"),
    ]
    for code, cases in ((1, failed), (2, usage), (3, not_found)):
        for args in cases:
            assert_exit(cli(db_url, *args), code)
    # A store that cannot be opened (here a directory where the database file should be).
    (tmp_path / "dir.db").mkdir()
    broken = f"sqlite:///{tmp_path / 'dir.db'}"
    for args in (("executions", "list"), ("executions", "get", "x"), ("memory", "list", "-n", "n")):
        assert_exit(cli(broken, *args), 4, "cannot open")
    tether.configure(db=db_url)  # the commands ran in this process, on their own --db
    assert [w.execution_id for w in client.pending_waits()] == [handle.id]
    assert memory.get("k", namespace="n") == 1


def test_the_exit_codes_are_in_the_help_and_the_readme() -> None:
    shown = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert shown.exit_code == 0
    readme = (TESTS.parent / "README.md").read_text()
    for line in ("0: success", "2: usage", "3: not found", "4: the store failed", "130"):
        assert line in shown.stdout, line
    for row in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 130, 143 |"):
        assert row in readme, row
