"""Flows for tests/test_mcp.py, imported by the processes that run them, never by the MCP
server under test: importing this module leaves a mark (in $IMPORT_MARK, when set), so a
test can tell that reading a stored value did not import it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tether

if os.environ.get("IMPORT_MARK"):
    Path(os.environ["IMPORT_MARK"]).write_text("imported\n")
    print("mcp_flows imported")  # on stdout, where an MCP server speaks its protocol


@dataclass
class Report:
    title: str
    pages: int


@tether.checkpoint
def write_report(title: str) -> Report:
    print(f"writing {title}")
    return Report(title, 3)


@tether.flow
def reporting(title: str) -> Report:
    return write_report(title)


@tether.checkpoint
def draft(topic: str) -> str:
    return f"draft on {topic}"


@tether.flow
def approval(topic: str) -> str:
    text = draft(topic)
    if not tether.wait("approve", schema=bool, question=f"publish {text!r}?"):
        return "rejected"
    return f"published {text}"
