"""Positions are data: `tether executions get` prints every recorded call's position (keyed
branches included, whatever their keys hold) and every wait's label, and `replay --from`
takes each of them back and forks at exactly that call."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import position_flows
import tether
from tether._core.positions import parse, sort_key
from tether.cli import app


def cli(db_url: str, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"TETHER_DB": db_url, "COLUMNS": "250"})


def cli_json(db_url: str, *args: str) -> Any:
    result = cli(db_url, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def crawled(client: tether.Client) -> str:
    handle = position_flows.crawl.run("tides")
    assert handle.result(timeout=60) == len(position_flows.KEYS)
    return handle.id


def forked_at(client: tether.Client, db_url: str, source: str, selector: str) -> str:
    """Replay `source` from `selector` (queued: nothing runs) and return the position, as
    shown, where the fork was made (the replay event records it)."""
    fork = cli_json(db_url, "executions", "replay", source, "--from", selector, "--queue")
    (event,) = [e for e in cli_json(db_url, "executions", "get", fork["id"])["events"]
                if e["kind"] == "replay"]  # fmt: skip
    client.cancel(fork["id"])
    position: str = event["position"]
    return position


def test_every_position_get_prints_is_taken_by_replay_from(
    client: tether.Client, db_url: str, crawled: str
) -> None:
    shown = cli(db_url, "executions", "get", crawled)
    assert shown.exit_code == 0, shown.output  # a key "/" once failed as Rich markup
    data = cli_json(db_url, "executions", "get", crawled)
    positions = [c["position"] for c in [*data["checkpoints"], *data["waits"]]]
    rows = {line.split()[0] for line in shown.stdout.splitlines() if line.strip()}
    # Keys as the code gave them, only `]` and `\` escaped: nothing vanished into markup.
    for expected in ("[https://a.example/x].0", "[/].0", "[[].0", "[[b\\]].0", "[a\\]b].0",
                     "[x.y].[inner.part].0", "[back\\\\slash].0", "[100%].0", "[%2E].0",
                     "11.0", "12.1"):  # fmt: skip
        assert expected in positions and expected in rows, expected
    for position in positions:
        assert position in rows, f"{position} is in the JSON but not in the table"
        assert forked_at(client, db_url, crawled, position) == position


def test_waits_and_sleeps_are_taken_by_the_label_get_prints(
    client: tether.Client, db_url: str, crawled: str
) -> None:
    shown = cli(db_url, "executions", "get", crawled).stdout
    waits = cli_json(db_url, "executions", "get", crawled)["waits"]
    waits.sort(key=lambda w: sort_key(parse(w["position"])))
    seen: dict[str, int] = {}
    for w in waits:
        label = w["label"]
        assert f"  {label}  " in shown, label
        seen[label] = seen.get(label, 0) + 1
        # The k-th of a label (every unnamed sleep shows as `sleep`) is `label#k`.
        selector = label if seen[label] == 1 else f"{label}#{seen[label]}"
        assert forked_at(client, db_url, crawled, selector) == w["position"], selector
    assert seen["sleep"] == len(position_flows.KEYS) + 2 and seen["sleep nap"] == 1
    assert forked_at(client, db_url, crawled, "sleep") == "1"
    assert forked_at(client, db_url, crawled, "nap") == "13"  # the name itself still works


def test_replay_from_takes_a_key_as_stored_too(
    client: tether.Client, db_url: str, crawled: str
) -> None:
    assert forked_at(client, db_url, crawled, "[https://a%2Eexample/x].0") == (
        "[https://a.example/x].0"
    )
    # Read as the user wrote it first: `[%2E]` is the key "%2E", not "." stored escaped.
    assert forked_at(client, db_url, crawled, "[%2E].0") == "[%2E].0"


def test_a_position_that_names_no_call_lists_them_as_shown(
    client: tether.Client, db_url: str, crawled: str
) -> None:
    result = cli(db_url, "executions", "replay", crawled, "--from", "[https://a.example/y].0")
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "no checkpoint call at position [https://a.example/y].0" in message
    assert "wait ok-0 (position [https://a.example/x].2)" in message
    assert "sleep nap (position 13)" in message
    assert "%2E" not in message.replace("[%2E]", "")
    assert [r.id for r in client.list()] == [crawled], "nothing was started"


def test_logs_show_positions_as_get_does(db_url: str, crawled: str) -> None:
    result = cli(db_url, "executions", "logs", crawled, "--checkpoint", "[a\\]b].0")
    assert result.exit_code == 0, result.output
    assert "#[a\\]b].0 fetch" in result.stdout and "fetched a]b" in result.stdout
