"""What the `tether` command prints stays inside what its readers accept: `--json` is strict
JSON (no NaN or Infinity, even from rows written before), and numbers given as options are
bounded, each out-of-range one a usage error (exit 2) that says the range."""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import tether
from backend import BACKEND
from helpers import retry_until
from tether import Status
from tether._core import serde
from tether._memory import api as memory
from tether.cli import app

ODD = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "list": [1.5, math.nan]}
AS_STRINGS = {"nan": "NaN", "inf": "Infinity", "ninf": "-Infinity", "list": [1.5, "NaN"]}


def cli(db_url: str, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"TETHER_DB": db_url, "COLUMNS": "200"})


def _refuse(constant: str) -> Any:
    raise AssertionError(f"not strict JSON: {constant}")


def strict(text: str) -> Any:
    """Parse as a strict parser (jq, JavaScript) would: NaN and Infinity are errors."""
    return json.loads(text, parse_constant=_refuse)


def strict_lines(text: str) -> list[Any]:
    return [strict(line) for line in text.splitlines() if line.strip()]


@tether.checkpoint
def measure(n: int) -> dict[str, Any]:
    return ODD


@tether.flow
def odd_numbers(n: int) -> dict[str, Any]:
    measure(n)
    tether.wait("check", schema=Any, question=ODD)
    return ODD


def test_json_output_never_prints_nan_or_infinity(client: tether.Client, db_url: str) -> None:
    handle = odd_numbers.run(1)
    retry_until(lambda: handle.status() is Status.WAITING, what="the flow to wait")
    (waiting,) = strict(cli(db_url, "executions", "waits", "--json").stdout)
    assert waiting["question"] == AS_STRINGS
    client.input(handle.id, "check", True)
    result = handle.result(timeout=10)
    assert math.isnan(result["nan"]) and result["ninf"] == -math.inf, "stored as it was"

    got = cli(db_url, "executions", "get", handle.id, "--json")
    assert got.exit_code == 0, got.output
    record = strict(got.stdout)
    assert record["result"] == AS_STRINGS
    assert record["checkpoints"][0]["result"] == AS_STRINGS
    (listed,) = strict(cli(db_url, "executions", "list", "--json").stdout)
    assert listed["id"] == handle.id
    watched = strict_lines(cli(db_url, "executions", "watch", handle.id, "--json").stdout)
    assert watched and watched[-1]["status"] == "succeeded"

    memory.set("odd", ODD, namespace="n")
    value = cli(db_url, "memory", "get", "odd", "--namespace", "n", "--json")
    assert value.exit_code == 0, value.output
    assert strict(value.stdout)["value"] == AS_STRINGS


def write_raw_result(db_url: str, execution_id: str, text: str) -> None:
    """Rewrite a row's result with the database's own client, as another writer would."""
    update = "UPDATE executions SET result = {mark} WHERE id = {mark}"
    if BACKEND == "postgres":
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(update.format(mark="%s"), (text, execution_id))
        return
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        conn.execute(update.format(mark="?"), (text, execution_id))


def test_rows_written_with_bare_nan_print_as_strict_json(
    client: tether.Client, db_url: str
) -> None:
    # A row another writer (or an old tether) left with JSON's forbidden words in it.
    handle = odd_numbers.run(2)
    retry_until(lambda: handle.status() is Status.WAITING, what="the flow to wait")
    write_raw_result(db_url, handle.id, '{"a": NaN, "b": [Infinity, -Infinity]}')
    got = cli(db_url, "executions", "get", handle.id, "--json")
    assert got.exit_code == 0, got.output
    assert strict(got.stdout)["result"] == {"a": "NaN", "b": ["Infinity", "-Infinity"]}
    assert math.isnan(client.get(handle.id).result["a"]), "Python readers get the float"


# --- integer and number options ---------------------------------------------------------


HUGE = "100000000000000000000"


@pytest.mark.parametrize(
    "args",
    [
        ["executions", "list", "--limit", HUGE],
        ["executions", "list", "--limit", "0"],
        ["executions", "waits", "--limit", HUGE],
        ["memory", "list", "--limit", HUGE],
        ["memory", "get", "k", "--version", HUGE],
        ["memory", "set", "k", "--value", "1", "--if-version", HUGE],
        ["memory", "set", "k", "--value", "1", "--if-version", "-1"],
        ["worker", "--concurrency", HUGE],
        ["worker", "--poll", "1e400"],
        ["worker", "--poll", "nan"],
        ["worker", "--grace", "inf"],
        ["worker", "--grace", "-1"],
        ["executions", "prune", "--older-than", f"{HUGE}w"],
    ],
)
def test_numbers_out_of_range_are_usage_errors_that_say_the_range(
    client: tether.Client, db_url: str, args: list[str]
) -> None:
    result = cli(db_url, *args)
    assert result.exit_code == 2, result.output
    assert "OverflowError" not in result.output and "Traceback" not in result.output
    assert f"Invalid value for '{args[-2]}'" in " ".join(result.output.split()), result.output


def test_the_largest_numbers_allowed_still_work(client: tether.Client, db_url: str) -> None:
    assert cli(db_url, "executions", "list", "--limit", "1000000").exit_code == 0
    assert cli(db_url, "memory", "list", "--limit", "1000000").exit_code == 0
    missing = cli(db_url, "memory", "get", "k", "--version", str(2**62), "--namespace", "n")
    assert missing.exit_code == 3, missing.output  # not found (the exit-code table)
    pruned = cli(db_url, "executions", "prune", "--older-than", "5200w", "--yes")
    assert pruned.exit_code == 0, pruned.output


def test_data_for_other_languages_spells_non_finite_floats_as_the_cli_does() -> None:
    # serde.to_data is what the HTTP API and MCP server return for stored values.
    tagged = serde.dumps(ODD)
    assert serde.to_data(tagged) == AS_STRINGS
    assert serde.to_data('{"a": NaN, "b": [Infinity, -Infinity, 1.5]}') == {
        "a": "NaN",
        "b": ["Infinity", "-Infinity", 1.5],
    }
    assert serde.to_data('{"text": "NaN is a word"}') == {"text": "NaN is a word"}
