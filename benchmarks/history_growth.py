#!/usr/bin/env python3
"""Storage per turn of a long conversation kept in tether.memory: linear, not quadratic.

Usage:
    python benchmarks/history_growth.py [--turns 200] [--json]

A durable Pydantic AI agent (`tether.ai.durable(Agent(FunctionModel(...)))`, offline: the
model answers with ~300 characters) holds a conversation inside one `@tether.flow`. Each
turn reads the history, runs the agent with it, and stores the new history
(`result.all_messages()`), in one of three ways, each on a fresh SQLite file:

- `memory list`: `tether.memory.set("chat", messages)`; read back with
  `tether.memory.get("chat", type=list[ModelMessage])`. Messages are content-addressed blobs;
  a list that extends the previous version is stored as that version plus the new items.
- `memory one value`: `tether.memory.set("chat", {"messages": messages})`: the whole history
  as one value (one blob) every turn.
- `checkpoint result`: a `@tether.checkpoint` that returns the whole history, the way a flow
  without memory keeps it: its recorded result is the whole history, every turn.

After every turn the database is measured from a separate connection with SQLite's `dbstat`
virtual table: the bytes used in the pages of every table and index (`sum(pgsize - unused)`),
so page-level overhead and indexes count, free space does not. The WAL is included (dbstat
reads through the pager). Also reported: the payload of the memory tables alone (the summed
`length()` of every stored column of `memory` and `blobs`). Both include the agent's own
checkpoints (`agent_run`, `model_request` with its response, the memory calls' version
numbers), the same in every variant.

The table shows bytes per turn averaged over turns 1-50 and 151-200 (for --turns 200): flat
for `memory list`, growing with the conversation for the other two.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import tether
import tether.ai
from tether._core import config as _config

VARIANTS = ("memory list", "memory one value", "checkpoint result")
ANSWER = "Durable execution keeps each step's result, so a crash costs one step, not the run. "


def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = sum(isinstance(m, ModelResponse) for m in messages) + 1
    return ModelResponse(parts=[TextPart(f"{turn}: {ANSWER * 4}")])


agent = tether.ai.durable(Agent(FunctionModel(answer)))


@tether.checkpoint
def keep(messages: list[ModelMessage]) -> list[ModelMessage]:
    return messages


_sizes: list[tuple[int, int]] = []
_db_path = ""


def measure() -> tuple[int, int]:
    """(bytes used by every table and index, payload bytes of the memory tables)."""
    conn = sqlite3.connect(_db_path)
    try:
        (used,) = conn.execute("SELECT sum(pgsize - unused) FROM dbstat").fetchone()
        (memory,) = conn.execute(
            "SELECT coalesce(sum(length(scope) + length(scope_id) + length(key) + 8 + 1 + "
            "coalesce(length(blob), 0) + 8 + coalesce(length(items), 0) + 8 + 8 + 8 + "
            "coalesce(length(writer_execution), 0) + 8 + coalesce(length(idempotency_key), 0)),"
            " 0) FROM memory"
        ).fetchone()
        (blobs,) = conn.execute(
            "SELECT coalesce(sum(length(hash) + length(data)), 0) FROM blobs"
        ).fetchone()
        return int(used), int(memory) + int(blobs)
    finally:
        conn.close()


@tether.flow
async def conversation(turns: int, variant: str) -> int:
    history: list[ModelMessage] = []
    for turn in range(1, turns + 1):
        if variant == "memory list":
            history = tether.memory.get("chat", [], type=list[ModelMessage])
        elif variant == "memory one value":
            history = tether.memory.get("chat", {"messages": []})["messages"]
        result = await agent.run(
            f"Question {turn}: what does durable execution buy?", message_history=history
        )
        history = result.all_messages()
        if variant == "memory list":
            tether.memory.set("chat", history)
        elif variant == "memory one value":
            tether.memory.set("chat", {"messages": history})
        else:
            history = keep(history)
        _sizes.append(measure())
    return len(history)


def run_variant(variant: str, turns: int, folder: Path) -> dict[str, Any]:
    global _db_path
    _db_path = str(folder / f"{variant.replace(' ', '_')}.db")
    _config.reset()
    tether.configure(db=f"sqlite:///{_db_path}")
    _sizes.clear()
    _sizes.append(measure_empty())
    started = time.perf_counter()
    messages = conversation.run(turns, variant).result(timeout=3600)
    seconds = time.perf_counter() - started
    used = [b - a for (a, _), (b, _) in itertools.pairwise(_sizes)]
    payload = [b - a for (_, a), (_, b) in itertools.pairwise(_sizes)]
    window = max(1, turns // 4)
    return {
        "variant": variant,
        "turns": turns,
        "messages": messages,
        "seconds": round(seconds, 2),
        "db_bytes_total": _sizes[-1][0],
        "db_bytes_per_turn_first": _mean(used[:window]),
        "db_bytes_per_turn_last": _mean(used[-window:]),
        "memory_bytes_per_turn_first": _mean(payload[:window]),
        "memory_bytes_per_turn_last": _mean(payload[-window:]),
        "window": window,
    }


def measure_empty() -> tuple[int, int]:
    tether.Client()  # creates the schema, so the first turn's delta is the turn's alone
    return measure()


def _mean(values: list[int]) -> int:
    return round(sum(values) / len(values)) if values else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tether-history-") as folder:
        rows = [run_variant(v, options.turns, Path(folder)) for v in VARIANTS]
    _config.reset()
    if options.json:
        print(json.dumps(rows, indent=2))
        return
    w = rows[0]["window"]
    first, last = f"1-{w}", f"{options.turns - w + 1}-{options.turns}"
    print(f"{options.turns}-turn conversation, {rows[0]['messages']} messages; bytes per turn")
    print(
        "(database: dbstat pgsize-unused of all tables and indexes; memory: payload of the "
        "memory and blobs tables)\n"
    )
    header = (
        f"{'variant':<20}{'db ' + first:>12}{'db ' + last:>14}{'growth':>8}"
        f"{'memory ' + first:>14}{'memory ' + last:>18}{'db total':>12}{'time':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        growth = r["db_bytes_per_turn_last"] / max(1, r["db_bytes_per_turn_first"])
        print(
            f"{r['variant']:<20}{r['db_bytes_per_turn_first']:>12,}"
            f"{r['db_bytes_per_turn_last']:>14,}{growth:>7.1f}x"
            f"{r['memory_bytes_per_turn_first']:>14,}{r['memory_bytes_per_turn_last']:>18,}"
            f"{r['db_bytes_total']:>12,}{r['seconds']:>7.1f}s"
        )


if __name__ == "__main__":
    sys.exit(main())
