"""The SQL store, written once for every database, composed of one part per aggregate.

`SqlStore` holds every query of the `Store` interface in portable SQL, in parts that each
own one aggregate and stand on `SqlBase` (the dialect hooks and statement helpers,
`_sql_common`). A dialect subclass (`sqlite.py`, `postgres.py`) supplies only what differs:
how to get a connection, how to open a write transaction, its placeholder style, row
locking for claims, and its DDL migrations. No `if sqlite:` branches live here.
"""

from __future__ import annotations

import abc

from ._sql_checkpoints import CheckpointsSql
from ._sql_claims import CLAIM_WINDOW, ClaimsSql
from ._sql_common import (
    CHECKPOINT_FIELDS,
    EXECUTION_COLUMNS,
    RELEASED,
    Connection,
    SqlBase,
    checkpoint_values,
    event_params,
    to_format_style,
)
from ._sql_executions import ExecutionsSql
from ._sql_memory import MemorySql
from ._sql_migrations import MigrationsSql
from ._sql_schedules import SchedulesSql
from ._sql_tokens import TokensSql
from ._sql_waits import WaitsSql

__all__ = [
    "CHECKPOINT_FIELDS",
    "CLAIM_WINDOW",
    "EXECUTION_COLUMNS",
    "RELEASED",
    "Connection",
    "SqlBase",
    "SqlStore",
    "checkpoint_values",
    "event_params",
    "to_format_style",
]


class SqlStore(
    ExecutionsSql,
    ClaimsSql,
    WaitsSql,
    CheckpointsSql,
    MemorySql,
    TokensSql,
    SchedulesSql,
    MigrationsSql,
    abc.ABC,
):
    """Every query, once. Subclasses provide connections and the dialect."""
