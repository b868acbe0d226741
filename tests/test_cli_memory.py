"""The `tether memory` commands, through Typer's CliRunner and through a real process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import memory_flows
import tether
from helpers import run_cli
from tether._memory import api as memory
from tether.cli import app

COMMANDS = ["list", "get", "set", "history", "delete"]


@pytest.fixture(autouse=True)
def _store_exists(db_url: str) -> None:
    tether.Client(db_url)


def cli(db_url: str, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(
        app, ["memory", *args], input=stdin, env={"TETHER_DB": db_url, "COLUMNS": "200"}
    )


def cli_json(db_url: str, *args: str) -> Any:
    result = cli(db_url, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_plain_error(result: Result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, (word, result.output)


def test_every_command_has_help() -> None:
    top = CliRunner().invoke(app, ["memory", "--help"])
    assert top.exit_code == 0
    for command in COMMANDS:
        assert command in top.output
        result = CliRunner().invoke(app, ["memory", command, "--help"])
        assert result.exit_code == 0, command
        assert "--namespace" in result.output and "--json" in result.output


def test_set_get_history_delete(db_url: str) -> None:
    assert cli(db_url, "set", "prefs", "-n", "alice", "--value", '{"dark": true}').exit_code == 0
    result = cli(
        db_url, "set", "prefs", "--namespace", "alice", "--if-version", "1", stdin='{"dark": false}'
    )
    assert result.exit_code == 0 and "Stored version 2 of 'prefs'" in result.output
    assert cli_json(db_url, "get", "prefs", "-n", "alice")["value"] == {"dark": False}
    assert cli_json(db_url, "get", "prefs", "-n", "alice", "--version", "1")["value"] == {
        "dark": True
    }
    plain = cli(db_url, "get", "prefs", "-n", "alice")
    assert json.loads(plain.stdout) == {"dark": False}
    assert cli(db_url, "delete", "prefs", "-n", "alice").exit_code == 0
    history = cli_json(db_url, "history", "prefs", "-n", "alice", "--values")
    assert [(h["version"], h["deleted"], h["value"]) for h in history] == [
        (1, False, {"dark": True}),
        (2, False, {"dark": False}),
        (3, True, None),
    ]
    table = cli(db_url, "history", "prefs", "-n", "alice", "--values")
    assert "deleted" in table.output and '{"dark": true}' in table.output
    assert memory.get("prefs", "gone", namespace="alice") == "gone"


def test_a_string_value_prints_as_it_is(db_url: str) -> None:
    cli(db_url, "set", "greeting", "--scope", "namespace", "--value", '"hello there"')
    assert cli(db_url, "get", "greeting", "--scope", "namespace").stdout == "hello there\n"
    assert memory.get("greeting", scope="namespace") == "hello there"


def test_list_shows_keys_of_every_scope_or_of_one(db_url: str) -> None:
    memory.set("user:1", 1, namespace="acme")
    memory.set("user:2", [1, 2, 3], namespace="acme")
    memory.set("other", 3, namespace="acme")
    memory.set("runs", 7, flow="counter")
    everything = cli_json(db_url, "list")
    assert [(e["scope"], e["scope_id"], e["key"]) for e in everything] == [
        ("flow", "counter", "runs"),
        ("namespace", "acme", "other"),
        ("namespace", "acme", "user:1"),
        ("namespace", "acme", "user:2"),
    ]
    assert [e["key"] for e in cli_json(db_url, "list", "user:", "-n", "acme")] == [
        "user:1",
        "user:2",
    ]
    table = cli(db_url, "list", "--flow", "counter")
    assert "runs" in table.output and "user:1" not in table.output
    assert "3 items" in cli(db_url, "list", "user:2", "-n", "acme").output
    assert "No memory keys match." in cli(db_url, "list", "zzz").output


def test_a_flow_s_writes_show_who_wrote_them(client: tether.Client, db_url: str) -> None:
    handle = memory_flows.counter.run("cli", 2)
    handle.result(timeout=30)
    history = cli_json(db_url, "history", "count", "-n", "cli")
    assert [(h["execution_id"], h["position"]) for h in history] == [
        (handle.id, "1"),
        (handle.id, "3"),
    ]
    assert f"{handle.id} @3" in cli(db_url, "history", "count", "-n", "cli").output
    own = memory_flows.scoped.run(5)
    own.result(timeout=30)
    assert cli_json(db_url, "get", "own", "--execution", own.id)["value"] == 5
    assert cli_json(db_url, "get", "runs", "--flow", "scoped")["value"] == 1


def test_mistakes_are_plain_errors_and_change_nothing(db_url: str) -> None:
    memory.set("k", "kept", namespace="n")
    assert_plain_error(cli(db_url, "set", "k", "-n", "n", "--value", "{oops"), 2, "not valid JSON")
    bare = cli(db_url, "set", "k", "-n", "n", "--value", "hello")
    assert_plain_error(bare, 2, "JSON quotes", "--value '\"hello\"'", "Nothing was stored")
    assert_plain_error(cli(db_url, "get", "k"), 2, "--namespace NAME")
    assert_plain_error(cli(db_url, "get", "k", "-n", "a", "--flow", "f"), 2, "different scopes")
    assert_plain_error(cli(db_url, "get", "k", "--scope", "global"), 2, "'execution', 'flow'")
    assert_plain_error(cli(db_url, "get", "nope", "-n", "n"), 3, "no memory key 'nope'")
    assert_plain_error(cli(db_url, "get", "k", "-n", "n", "-v", "9"), 3, "has no version 9")
    assert_plain_error(cli(db_url, "get", "k", "-n", "n", "-v", "0"), 2)
    assert_plain_error(cli(db_url, "delete", "nope", "-n", "n"), 3, "nothing to delete")
    assert_plain_error(cli(db_url, "history", "nope", "-n", "n"), 3, "no versions")
    conflict = cli(db_url, "set", "k", "-n", "n", "--value", '"x"', "--if-version", "0")
    assert_plain_error(conflict, 1, "is at version 1, not 0")
    assert [v.value for v in memory.history("k", namespace="n")] == ["kept"]


def test_read_commands_refuse_a_database_that_does_not_exist(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'typo' / 'tether.db'}"
    for args in (["list"], ["get", "k", "-n", "a"], ["history", "k", "-n", "a"],
                 ["delete", "k", "-n", "a"]):  # fmt: skip
        assert_plain_error(cli(missing, *args), 2, "no tether database at")
    assert not (tmp_path / "typo").exists()


def test_in_a_real_process(db_url: str) -> None:
    stored = run_cli(db_url, "memory", "set", "plan", "-n", "team", "--value", '["a", "b"]')
    assert stored.returncode == 0, stored.stderr
    got = run_cli(db_url, "memory", "get", "plan", "-n", "team", "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["value"] == ["a", "b"]
    missing = run_cli(db_url, "memory", "get", "nope", "-n", "team")
    assert missing.returncode == 3 and "no memory key 'nope'" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert memory.get("plan", namespace="team") == ["a", "b"]
