"""The workload of benchmarks/fleet.py, for tether and for DBOS, side by side.

One execution = ``checkpoints`` sequential steps, each returning a fresh ~200 B dict
(``payload``). tether worker processes import this module by name (``tether worker --import
_fleet_flows``, with benchmarks/ on PYTHONPATH); DBOS is imported only by ``dbos_workflow()``,
so a tether worker never pays for importing it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import tether

_TEXT = "x" * 128  # sized so one serialized step result is ~200 bytes of JSON

DBOS_QUEUE = "fleet"
DBOS_WORKFLOW = "fleet_workflow"


def payload(execution: int, i: int) -> dict[str, Any]:
    """A fresh ~200 B JSON-serializable dict for step ``i`` of execution ``execution``."""
    return {"execution": execution, "step": i, "text": _TEXT, "tags": [f"tag-{i % 7}", "fleet"]}


def payload_size() -> int:
    return len(json.dumps(payload(399, 19)))


# --- tether ---------------------------------------------------------------------------------------


@tether.checkpoint
def fleet_step(execution: int, i: int) -> dict[str, Any]:
    return payload(execution, i)


@tether.flow
def fleet_flow(execution: int, checkpoints: int) -> int:
    for i in range(checkpoints):
        fleet_step(execution, i)
    return checkpoints


# --- DBOS -----------------------------------------------------------------------------------------

_dbos_workflow: Callable[[int, int], int] | None = None


def dbos_workflow() -> Callable[[int, int], int]:
    """The DBOS twin of ``fleet_flow``: a ``@DBOS.workflow()`` calling a ``@DBOS.step()``
    ``checkpoints`` times. Registered under fixed names (``DBOS_WORKFLOW``) on first call, which
    must come before ``DBOS(config=...)`` is launched."""
    global _dbos_workflow
    if _dbos_workflow is None:
        from dbos import DBOS

        @DBOS.step(name="fleet_step")
        def dbos_step(execution: int, i: int) -> dict[str, Any]:
            return payload(execution, i)

        @DBOS.workflow(name=DBOS_WORKFLOW)
        def dbos_flow(execution: int, checkpoints: int) -> int:
            for i in range(checkpoints):
                dbos_step(execution, i)
            return checkpoints

        _dbos_workflow = dbos_flow
    return _dbos_workflow
