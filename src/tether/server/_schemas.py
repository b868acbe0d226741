"""The shapes of the API's answers, for its OpenAPI document: what `_ops/views.py` returns,
written out as Pydantic models so that clients (and the schemathesis fuzz test) can check
every field.

They document; they do not convert. Routes return the views' dicts and FastAPI sends them
as they are (`responses=`, not `response_model=`): a long execution is not validated field
by field on every read. `extra="forbid"` makes the document strict, so a view that gains a
field the models lack fails the fuzz test instead of drifting unseen.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Positions are text ("0", "2.1"); events and logs written before that may hold a number.
Position = str | int | None


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorInfoOut(_Shape):
    type: str
    message: str
    traceback: str


class UsageOut(_Shape):
    input_tokens: int
    output_tokens: int
    requests: int
    cost_usd: float | None
    cache_read_tokens: int
    cache_write_tokens: int
    unpriced_requests: int
    by_model: dict[str, dict[str, Any]] | None = None
    total_tokens: int
    cost_complete: bool


class RunningOut(_Shape):
    position: Position
    name: str | None
    since: str | None


class AttemptOut(_Shape):
    attempt: int
    started_at: str
    finished_at: str
    duration: float
    error: str | None


class CheckpointOut(_Shape):
    position: str
    name: str
    status: str
    attempts: list[AttemptOut]
    started_at: str | None
    finished_at: str | None
    duration: float | None
    result: Any = Field(description="The stored value as data (see the API's notes).")
    error: ErrorInfoOut | None
    metadata: dict[str, Any]
    usage: UsageOut | None
    copied_from: str | None


class WaitOut(_Shape):
    execution_id: str
    flow: str | None
    name: str
    position: str
    label: str
    kind: str
    status: str
    question: Any
    json_schema: dict[str, Any] | None
    metadata: dict[str, Any]
    deadline: str | None
    since: str | None
    resolved_at: str | None
    resolved_by: str | None
    value: Any
    copied_from: str | None


class EventOut(_Shape):
    id: int
    at: str | None
    position: Position
    level: str
    kind: str
    message: str


class LogOut(_Shape):
    id: int
    at: str | None
    position: Position
    checkpoint: str | None
    stream: str
    level: str
    logger: str | None
    attempt: int | None
    message: str


class MessageOut(_Shape):
    """A message sent to a wait (`send`): `sent`, `delivered` or `rejected`."""

    execution_id: str
    name: str
    status: Literal["sent", "delivered", "rejected"]
    value: Any
    sent_by: str | None
    sent_at: str
    delivered_at: str | None
    error: str | None


class ExecutionOut(_Shape):
    """An execution as lists show it."""

    id: str
    flow: str
    status: Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled"]
    attempts: int
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    duration: float | None
    owner: str | None
    lease_expires: str | None
    cancel_requested: bool
    parent_id: str | None
    replay_of: str | None
    wake_at: str | None
    deadline: str | None = Field(description="When it is cancelled as timed out, if ever.")
    deadline_after: float | None = Field(
        description="A deadline of this many seconds from its first start, not started yet."
    )
    not_before: str | None = Field(description="Queued, it is not started before then.")
    result: Any = Field(
        description="The stored value as data: a class as its type name, "
        "kind and data; nothing restored."
    )
    error: ErrorInfoOut | None
    running: list[RunningOut]
    checkpoints_done: int | None
    pending_wait: str | None


class BudgetOut(_Shape):
    max_tokens: int | None
    max_cost_usd: float | None


class LineageOut(_Shape):
    parent_id: str | None
    replay_of: str | None


class ExecutionDetailOut(ExecutionOut):
    """An execution with everything `Client.get()` reads."""

    import_path: str
    args: Any
    metadata: dict[str, Any]
    checkpoints: list[CheckpointOut]
    waits: list[WaitOut]
    usage: UsageOut | None
    budget: BudgetOut | None
    warnings: list[str]
    events: list[EventOut]
    children: list[ExecutionOut]
    lineage: LineageOut
    messages: list[MessageOut]
    published: dict[str, Any] = Field(description="The latest value per published key.")
    checkpoint_count: int = Field(description="How many checkpoint calls were recorded.")
    checkpoints_next: int | None = Field(
        description="The checkpoint_offset of the next window of calls; null: none."
    )


class ExecutionPageOut(_Shape):
    items: list[ExecutionOut]
    next: str | None = Field(description="The cursor of the next page; null on the last.")
    counts: dict[str, int] | None = Field(
        default=None,
        description="With `counts=true`: how many executions of each status the other "
        "filters (flow, parent, queue, id_prefix) select, each counted up to `counts_cap` "
        "(a count equal to it means that many or more).",
    )
    counts_cap: int | None = Field(default=None, description="The cap of `counts`.")


class LogsOut(_Shape):
    items: list[LogOut]


class WaitsOut(_Shape):
    items: list[WaitOut]


class CancelledOut(_Shape):
    id: str
    status: str


class UsageTotalsOut(_Shape):
    flow: str | None
    since: str | None
    usage: UsageOut | None


class FlowOut(_Shape):
    name: str
    queue: str | None
    async_: bool = Field(alias="async")
    signature: str


class FlowsOut(_Shape):
    items: list[FlowOut]


class MemoryOut(_Shape):
    key: str
    scope: str
    scope_id: str
    version: int
    deleted: bool
    created_at: str
    size: int
    length: int | None
    execution_id: str | None
    position: str | None
    value: Any = Field(default=None, description="Only when a version is read.")


class MemoriesOut(_Shape):
    items: list[MemoryOut]


class ScheduleOut(_Shape):
    """A scheduled flow's schedule: its spec (cron in UTC, or `every <seconds>s`), paused or
    not, the latest tick fired or passed over and the next one."""

    name: str
    spec: str
    paused: bool
    last_tick: str
    next_tick: str


class SchedulesOut(_Shape):
    items: list[ScheduleOut]


class HealthOut(_Shape):
    status: Literal["ok"]
