"""The store interface: what the engine and the client need from a database.

Nothing above `store/` knows which database it talks to. Every store passes
the conformance suite in `tests/store/`. Rows are plain data; decoding stored
values is the caller's business (see `_serde`), so a store never imports user
types.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum


@dataclass(slots=True)
class ExecutionRow:
    id: str
    flow: str
    import_path: str
    script: str | None
    args: str
    status: str
    result: str | None = None
    error: str | None = None
    owner: str | None = None
    lease_token: str | None = None
    lease_expires: float | None = None
    attempt: int = 0
    cancel_requested: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    parent_id: str | None = None
    replay_of: str | None = None
    metadata: str | None = None
    options: str | None = None
    wake_at: float | None = None
    progress: str | None = None
    queue: str = "default"
    priority: int = 0
    dedup_key: str | None = None
    # Times in a row its holder stopped without ending it and another took it over, with no
    # progress recorded in between (a crash loop); and the earliest time it may be claimed.
    takeovers: int = 0
    not_before: float | None = None
    # When it is cancelled as timed out (the timers' clock); see migration 0015.
    deadline: float | None = None
    # Filled by list_executions only: succeeded checkpoint calls, and a pending wait's name.
    checkpoints_done: int | None = None
    pending_wait: str | None = None
    # Filled by claim_runnable only: whether any checkpoint call or wait of the execution is
    # recorded. False lets the claimer skip loading them (an execution's first run). Not a
    # stored column, so not compared.
    has_history: bool | None = field(default=None, compare=False)


@dataclass(slots=True)
class CheckpointRow:
    position: str
    name: str
    fingerprint: str
    status: str
    result: str | None = None
    error: str | None = None
    attempts: str | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    metadata: str | None = None


@dataclass(slots=True)
class CheckpointOutline:
    """What a page of an execution's checkpoint calls says of all of them: their positions in
    program order, how many succeeded, and the metadata of each call that recorded model
    usage (to total it), in program order."""

    positions: list[str]
    succeeded: int
    usage: list[str]


@dataclass(slots=True)
class WaitRow:
    execution_id: str
    name: str
    position: str
    kind: str  # "input" or "sleep"
    status: str  # "pending", "resolved", "timed_out" or "cancelled"
    schema_ref: str | None = None
    json_schema: str | None = None
    question: str | None = None
    metadata: str | None = None
    deadline: float | None = None
    value: str | None = None
    resolved_by: str | None = None
    created_at: float = 0.0
    resolved_at: float | None = None


@dataclass(slots=True)
class MessageRow:
    """Input sent to a wait before the flow reached it (`Client.send`)."""

    execution_id: str
    name: str
    value: str
    status: str  # "sent" (not delivered yet), "delivered" or "rejected"
    sent_by: str | None = None
    sent_at: float = 0.0
    error: str | None = None  # why it was rejected
    delivered_at: float | None = None


class Sent(Enum):
    """What `Store.send_message` found and did."""

    STORED = "stored"  # the wait is not reached yet: kept until it is
    DELIVERED = "delivered"  # the wait was pending: resolved with the value
    VALIDATE = "validate"  # the wait is pending, and the value was not validated: nothing done
    DUPLICATE = "duplicate"  # a message for that wait is waiting already: nothing done
    ANSWERED = "answered"  # the wait is no longer pending: nothing done
    NOT_INPUT = "not_input"  # that name is a sleep or a wait for a child: nothing done
    FINISHED = "finished"  # the execution has ended: nothing done
    NOT_FOUND = "not_found"  # no such execution


@dataclass(slots=True)
class PendingWaitRow:
    wait: WaitRow
    flow: str


@dataclass(slots=True)
class EventRow:
    execution_id: str
    position: str | None
    at: float
    level: str
    kind: str
    message: str
    data: str | None = None
    id: int | None = None  # assigned by the store, increasing


@dataclass(slots=True)
class TokenRow:
    """An API token of `tether server`: its name, the sha256 of its secret (hex) and its
    scope (`read`, `operate` or `admin`). A revoked token keeps its row."""

    name: str
    hash: str
    scope: str
    created_at: float
    revoked_at: float | None = None


@dataclass(slots=True)
class ScheduleRow:
    """A schedule of a flow (`@tether.flow(schedule=...)`), by the flow's name: its spec as
    shown (a cron string, or `every <seconds>s`), whether it is paused, its last tick (fired,
    or passed over: a catch-up policy or a pause), its next tick, when it last changed, and
    when it was last resumed (ticks up to then came due while it was paused: never fired).
    Times are epoch seconds."""

    name: str
    spec: str
    paused: bool
    last_tick: float
    next_tick: float
    updated_at: float
    resumed_at: float | None = None


@dataclass(slots=True)
class ExecutionStats:
    """What `/metrics` reports: executions by (status, queue), since when the longest-queued
    execution has been queued (its `updated_at`: enqueued, given input, handed back; None:
    none is queued), and how many input waits are pending."""

    counts: dict[tuple[str, str], int]
    queued_since: float | None
    pending_waits: int


class Commit(IntEnum):
    """What a fenced checkpoint commit found. LOST is falsy: nothing was written."""

    LOST = 0
    COMMITTED = 1
    # Committed, and a cancel was requested: the holder learns it without an extra read.
    CANCEL_REQUESTED = 2


class ChildStart(IntEnum):
    """What starting a child execution found. LOST is falsy: nothing was written."""

    LOST = 0
    # The child and the parent's record of its start were written.
    STARTED = 1
    # An execution with the child's id exists already (a retried parent starting the same
    # call again): nothing was inserted; the parent's record of the start was written.
    EXISTED = 2
    # A cancel of the parent was requested: nothing was written, the parent must stop.
    CANCEL_REQUESTED = 3


@dataclass(slots=True)
class Claim:
    """A lease: who holds an execution, the fencing token, and until when."""

    owner: str
    token: str
    expires: float


class Store(abc.ABC):
    """A durable home for executions, their checkpoints and events."""

    url: str
    #: opened read-only: nothing is migrated or written; a write raises StoreOpenedReadOnly
    readonly: bool = False

    # --- executions ---------------------------------------------------------------------

    @abc.abstractmethod
    def create_execution(
        self,
        row: ExecutionRow,
        *,
        checkpoints: Sequence[CheckpointRow] = (),
        waits: Sequence[WaitRow] = (),
    ) -> str:
        """Insert a new execution, with recorded checkpoint calls and waits to start from
        (a replay's copy of its source), in one transaction. Returns its id; when an
        execution of the same flow already has `row.dedup_key`, nothing is inserted and
        that execution's id is returned."""

    @abc.abstractmethod
    def create_execution_async(
        self, row: ExecutionRow, *, then: Callable[[str | None], None] | None = None
    ) -> asyncio.Future[str]:
        """`create_execution(row)` (no seeds) for a caller on an event loop: the write is
        queued, the loop is not blocked on it, and starts made concurrently are committed
        together. The future (of the running loop) gives the id once the row is durable;
        cancelling it does not take the row back. `then`: called on that loop once the
        write is answered, before the future is resolved and even if it was cancelled, with
        the id (None when the row was not written, or its write failed)."""

    @abc.abstractmethod
    def get_execution(self, execution_id: str) -> ExecutionRow | None: ...

    @abc.abstractmethod
    def execution_ids(self, prefix: str, *, limit: int) -> list[str]:
        """Ids that start with `prefix` (taken literally), sorted, at most `limit`."""

    @abc.abstractmethod
    def list_executions(
        self,
        *,
        statuses: Sequence[str] | None,
        flow: str | None,
        limit: int,
        parent: str | None = None,
        before: tuple[float, str] | None = None,
        queue: str | None = None,
        id_prefix: str | None = None,
    ) -> list[ExecutionRow]:
        """Newest first (by `created_at`, then `id`), with `checkpoints_done` and
        `pending_wait` filled in; with `parent`, only the children of that execution; with
        `queue`, only those of that queue; with `id_prefix`, only ids that start with it;
        with `before` (created_at, id), only those after it in that order (a keyset page)."""

    @abc.abstractmethod
    def execution_stats(self) -> ExecutionStats:
        """Counts for monitoring (see ExecutionStats)."""

    @abc.abstractmethod
    def count_by_status(
        self,
        statuses: Sequence[str],
        *,
        cap: int,
        flow: str | None = None,
        parent: str | None = None,
        queue: str | None = None,
        id_prefix: str | None = None,
    ) -> dict[str, int]:
        """How many executions have each of `statuses`, counting at most `cap` of each (a
        count of `cap` means "cap or more"): bounded work however many there are. The other
        filters select as `list_executions`' do."""

    @abc.abstractmethod
    def start_child(
        self, parent_id: str, token: str, child: ExecutionRow, start: CheckpointRow
    ) -> ChildStart:
        """Insert the child execution `child` (its `parent_id` is `parent_id`) and the
        parent's record of starting it (`start`, a checkpoint row at the call's position),
        in one transaction fenced by the parent's lease token. An existing execution with the
        child's id is kept as it is (EXISTED); nothing is written when the token no longer
        holds the parent (LOST) or a cancel of the parent was requested (CANCEL_REQUESTED)."""

    @abc.abstractmethod
    def claim(
        self,
        execution_id: str,
        claim: Claim,
        *,
        from_statuses: Sequence[str],
        expected_token: str | None,
        now: float,
        status: str = "running",
    ) -> bool:
        """Take the lease if the status is one of `from_statuses` and the current token is
        `expected_token` (compare and swap), and set `status`. Moving to `running` counts
        an attempt."""

    @abc.abstractmethod
    def hand_over(self, execution_id: str, token: str, claim: Claim, *, now: float) -> bool:
        """Move a running execution's lease from the holder of `token` to `claim` (compare
        and swap): the same attempt, run on by another process (a Ray task taking over
        what its dispatcher claimed). Not a takeover: no attempt or takeover is counted."""

    @abc.abstractmethod
    def renew(
        self,
        execution_ids: Sequence[str],
        token_by_id: dict[str, str],
        expires: float,
        progress: dict[str, str | None] | None = None,
        *,
        refresh_before: float | None = None,
    ) -> list[tuple[str, bool]]:
        """Extend the leases still held to `expires`, and record the progress JSON of the
        ids in `progress` (the others' progress is left as it is); returns (id,
        cancel_requested) for each one held. With `refresh_before`, a lease that runs past
        it (and not past `expires`) is left as it is, still checked and reported: a
        heartbeat can write progress without rewriting the lease's expiry."""

    @abc.abstractmethod
    def cancel_requests(self) -> list[tuple[str, str]]:
        """(id, lease token) of every running execution with a cancel requested: what a
        heartbeat reads to tell its executions, whatever their leases' terms."""

    @abc.abstractmethod
    def finish(
        self,
        execution_id: str,
        token: str,
        *,
        status: str,
        result: str | None,
        error: str | None,
        now: float,
    ) -> bool:
        """Record the outcome and release the lease. False if the token no longer holds it."""

    def finish_async(
        self,
        execution_id: str,
        token: str,
        *,
        status: str,
        result: str | None,
        error: str | None,
        now: float,
    ) -> Awaitable[bool]:
        """`finish` for a caller on an event loop, which awaits what this returns and is
        never blocked on the write (by default it runs in a thread; the SQL stores group
        commit it with other executions' checkpoints and ends)."""
        return asyncio.to_thread(
            self.finish, execution_id, token, status=status, result=result, error=error, now=now
        )

    @abc.abstractmethod
    def release(
        self,
        execution_id: str,
        token: str,
        *,
        status: str,
        now: float,
        not_before: float | None = None,
    ) -> bool:
        """Give the lease back without an outcome (status back to `queued`, say).
        `not_before`: it is not claimed again before then (a crash loop's backoff)."""

    @abc.abstractmethod
    def request_cancel(self, execution_id: str, *, now: float) -> str | None:
        """Cancel at once if nobody runs it (returns `cancelled`); else flag it for the holder
        and return the current status. None if the id is unknown. Its unfinished descendants
        (children, their children...) are cancelled the same way in the same transaction."""

    @abc.abstractmethod
    def set_deadline(self, execution_id: str, token: str, deadline: float) -> bool:
        """Fix the deadline of the execution this token holds (a relative one, at its first
        start). False if the lease is gone."""

    @abc.abstractmethod
    def time_out(self, execution_id: str, token: str, *, error: str, now: float) -> bool:
        """End the execution this token holds as `cancelled` with `error` (why: its deadline
        passed), its pending waits too, and cancel its unfinished descendants as
        `request_cancel` does, in one transaction. False if the lease is gone (the
        descendants are cancelled all the same: the deadline is past for them too)."""

    @abc.abstractmethod
    def set_metadata(self, execution_id: str, token: str, metadata: str, now: float) -> bool: ...

    @abc.abstractmethod
    def leased_on_host(
        self, *, prefix: str, now: float, other_than: str | None = None
    ) -> list[ExecutionRow]:
        """Queued or running executions under a lease not expired at `now`, whose owner id
        starts with `prefix` (owners on one host): the ones a process on that host can find
        dead early, by their pid. Everything else unowned or expired is in `runnable()`.
        `other_than`: leave out this owner's (the caller's own: a process holding 10,000
        executions must not read them all back every few rounds to find none dead)."""

    @abc.abstractmethod
    def suspend(
        self,
        execution_id: str,
        token: str,
        *,
        wait: str,
        wake_at: float | None,
        now: float,
        note: EventRow | None = None,
    ) -> bool:
        """Park the execution (`waiting`, no owner) until input or `wake_at`, in one atomic
        step that is refused (False) if the lease is gone or if `wait` got its input in the
        meantime: then the holder must run the flow again instead. If a cancel was requested
        while it ran, it is parked as `cancelled` (its pending waits too).

        `note`: an event of this execution recorded in that same step, only when it is
        parked as `waiting` (not when refused, nor when parked as `cancelled`: nothing
        continues it then). The row keeps no owner while it waits, so this note (who
        continues it: `Client.continuation`, adoption) must never be missing from, or
        older than, the suspension a reader sees."""

    @abc.abstractmethod
    def claim_runnable(
        self,
        claim: Claim,
        *,
        now: float,
        due: float,
        ids: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        exclude_queues: Sequence[str] = (),
        exclude_flows: Sequence[tuple[str, str | None]] = (),
    ) -> ExecutionRow | None:
        """Take one runnable execution (oldest first), or None. Runnable: queued and not
        leased (or its lease expired at `now`), waiting and due (`wake_at <= due`, by the
        timer clock), or running with a lease expired at `now`. With `ids`, only among those;
        with `queues`, only from those; never from `exclude_queues`, nor of the flows in
        `exclude_flows` ((import path, script) pairs). Highest priority first, then oldest
        (among due timers and expired leases: among the earliest `_sql.CLAIM_WINDOW` of
        them, so a backlog of thousands costs a claim a bounded read). A queue's limits
        (`set_queue_limits`) hold across all claimers. Sets `running` and counts an attempt.
        The row returned has `has_history` filled in."""

    @abc.abstractmethod
    def set_queue_limits(
        self,
        name: str,
        *,
        concurrency: int | None,
        rate_limit: int | None,
        rate_period: float | None,
        now: float,
    ) -> None:
        """Set (or, with no limits, remove) the fleet-wide limits of a queue."""

    @abc.abstractmethod
    def runnable(
        self, *, now: float, due: float, limit: int, queues: Sequence[str] | None = None
    ) -> list[ExecutionRow]:
        """Runnable executions (see `claim_runnable`), highest priority and oldest first,
        without claiming them; with `queues`, only from those."""

    @abc.abstractmethod
    def scan_runnable(
        self,
        branch: str,
        *,
        after: tuple[float, str] | None,
        now: float,
        due: float,
        limit: int,
    ) -> list[ExecutionRow]:
        """One page of a keyset scan over one way of being runnable (see `claim_runnable`):
        `branch` is "queued" (ordered by created_at), "due" (waiting with a timer due, by
        wake_at) or "expired" (running on an expired lease, by lease_expires), each then by
        id; only rows after `after` (the key of the last row of the page before: that time
        and id). A scan that continues from where it stopped reaches every row however many
        come before it, reading at most `limit` rows a call."""

    @abc.abstractmethod
    def execution_states(self, ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """(status, owner) of each of the executions that exists, by id."""

    # --- waits --------------------------------------------------------------------------

    @abc.abstractmethod
    def create_wait(self, token: str, row: WaitRow) -> bool:
        """Record a pending wait, fenced by the lease token. An existing row of that name is
        kept as it is (True). False when the token no longer holds the execution."""

    @abc.abstractmethod
    def await_child(self, token: str, row: WaitRow, child_id: str) -> WaitRow | None:
        """Record the pending wait `row` (kind `child`, named `child:<child_id>`) of the
        parent `row.execution_id` for its child, fenced by the parent's lease token (None
        when it no longer holds it); an existing row of that name is kept. If the child has
        ended already, the wait is resolved with its outcome in the same transaction. The
        child's end resolves it otherwise (in the transaction that records the end), so one
        of the two always does. Returns the wait as stored."""

    @abc.abstractmethod
    def get_waits(self, execution_id: str) -> list[WaitRow]:
        """All waits of an execution, in program order (`store._positions.sort_key`)."""

    @abc.abstractmethod
    def resolve_wait(
        self,
        execution_id: str,
        name: str,
        *,
        status: str,
        value: str | None,
        by: str | None,
        now: float,
    ) -> bool:
        """Resolve a pending wait (`resolved` with input, or `timed_out`) and make a waiting
        execution runnable, atomically. False if the wait was not pending, or has a message
        being delivered to it (`send_message`): exactly one of concurrent resolutions wins."""

    @abc.abstractmethod
    def pending_waits(self, *, flow: str | None, limit: int) -> list[PendingWaitRow]:
        """Pending input waits of unfinished executions, oldest first."""

    @abc.abstractmethod
    def send_message(self, row: MessageRow, *, validated: bool, now: float) -> Sent:
        """Send `row.value` to the wait `row.name`, atomically under the execution's lock. A
        pending input wait is resolved with it at once (only if `validated`: the caller
        checked it against that wait's schema; else VALIDATE and nothing changes); a wait
        not reached yet gets it stored as a message (`sent`) for the flow to deliver. Either
        way a `waiting` execution becomes runnable. One message per wait: while one is
        stored and undelivered, another is refused (DUPLICATE), and so is input to the wait
        (`resolve_wait` returns False), so of a send and an input exactly one wins."""

    @abc.abstractmethod
    def get_messages(self, execution_id: str) -> list[MessageRow]:
        """The messages sent to waits of an execution, oldest first."""

    @abc.abstractmethod
    def deliver_message(
        self,
        execution_id: str,
        token: str,
        name: str,
        *,
        value: str | None,
        error: str | None,
        now: float,
    ) -> bool:
        """The holder's delivery of the stored message to its pending wait, fenced by the
        lease token (False, writing nothing, when it no longer holds it): with `value` (the
        validated input) the wait is resolved and the message `delivered`; with `error` the
        message is `rejected` and the wait stays pending."""

    # --- checkpoints --------------------------------------------------------------------

    @abc.abstractmethod
    def get_checkpoints(self, execution_id: str) -> list[CheckpointRow]:
        """All recorded checkpoint calls of an execution, in program order
        (`store._positions.sort_key`)."""

    @abc.abstractmethod
    def latest_call(self, execution_id: str, name: str) -> CheckpointRow | None:
        """The succeeded checkpoint call named `name` of an execution that finished last
        (the latest published value of a key: `_core.publish`), or None."""

    @abc.abstractmethod
    def checkpoint_outline(self, execution_id: str) -> CheckpointOutline:
        """The outline of an execution's recorded calls: no result, error or attempts, so
        cheap for thousands of calls (`get_checkpoints_at` then reads the ones shown)."""

    @abc.abstractmethod
    def get_checkpoints_at(
        self, execution_id: str, positions: Sequence[str]
    ) -> list[CheckpointRow]:
        """The recorded calls of an execution at `positions`, in program order."""

    @abc.abstractmethod
    def reset_for_retry(
        self, execution_id: str, *, positions: Sequence[str], waits: Sequence[str], now: float
    ) -> bool:
        """Make a failed execution runnable again (`queued`, outcome cleared), forgetting the
        checkpoint calls at `positions` and the waits named `waits` (the caller decides
        what lies after the retry point: positions are ordered by `_positions.sort_key`,
        not by their text), and, in the same transaction, the memory writes the execution
        made at those positions (`memory_write_key`): their versions stay in the history,
        but a write at such a position writes again. False unless it was failed."""

    @abc.abstractmethod
    def prune(self, *, before: float, statuses: Sequence[str], dry_run: bool) -> int:
        """Delete executions in `statuses` that finished before `before`, with everything
        recorded about them. Returns how many (that would be) deleted."""

    @abc.abstractmethod
    def record_checkpoint(
        self, execution_id: str, token: str, row: CheckpointRow, events: Sequence[EventRow] = ()
    ) -> Commit:
        """Commit one checkpoint call atomically, fenced by the lease token, with the output
        it logged (`events`). LOST (nothing written) when the token no longer holds the
        execution, or when a final row is already recorded at that position."""

    def record_checkpoint_async(
        self, execution_id: str, token: str, row: CheckpointRow, events: Sequence[EventRow] = ()
    ) -> Awaitable[Commit]:
        """`record_checkpoint` for a caller on an event loop, which awaits what this returns
        and is never blocked on the write (by default it runs in a thread; the SQL stores
        group commit it). Awaitable, not necessarily a coroutine: a store may hand back the
        future its writer resolves, one object less per commit on the hot path."""
        return asyncio.to_thread(self.record_checkpoint, execution_id, token, row, events)

    @abc.abstractmethod
    def usage_records(self, *, flow: str | None, since: float | None) -> list[str]:
        """The metadata texts of checkpoint calls that recorded model usage (their text
        contains `"tether.usage"`), and the data of `retry` events (which keep what forgotten
        calls spent), of executions of `flow` (all when None) created at or after `since`.
        A scan: for totals, not for a hot path."""

    # --- events -------------------------------------------------------------------------

    @abc.abstractmethod
    def add_event(self, event: EventRow) -> None: ...

    @abc.abstractmethod
    def get_events(
        self, execution_id: str, *, after: int = 0, kinds: Sequence[str] | None = None
    ) -> list[EventRow]:
        """Events in the order they were added; only those with an id above `after`, and of
        the given kinds."""

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once close() was called: executors forget work of a closed store."""
        return False

    def maintain(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Housekeeping that executors call now and then; a no-op unless a store needs it."""

    #: True when wait_for_work() returns as soon as work arrives (workers then poll rarely)
    notifies: bool = False

    def wait_for_work(self, timeout: float) -> None:
        """Block until an execution may have become runnable, or `timeout` seconds. Without
        notifications (the default) this just sleeps; workers then poll often."""
        time.sleep(timeout)

    @abc.abstractmethod
    def next_due(self) -> float | None:
        """The earliest wake-up time (timer clock) of a waiting execution, if any."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # --- API tokens (tether server) -----------------------------------------------------

    @abc.abstractmethod
    def create_token(self, row: TokenRow) -> bool:
        """Store a new token. False (nothing written) when a token that is not revoked
        has that name; a revoked one of that name is replaced."""

    @abc.abstractmethod
    def list_tokens(self) -> list[TokenRow]:
        """Every token, revoked ones included, by name."""

    @abc.abstractmethod
    def token_by_hash(self, hash: str) -> TokenRow | None:
        """The token (revoked or not) whose secret has this sha256, if any."""

    @abc.abstractmethod
    def revoke_token(self, name: str, *, now: float) -> bool:
        """Revoke a token by name. False when no token of that name is active."""

    # --- schedules -----------------------------------------------------------------------

    @abc.abstractmethod
    def ensure_schedule(self, row: ScheduleRow) -> None:
        """Record a schedule as a process declared it: a new one as given; for one that
        exists, only a changed spec and its next tick (its last tick and paused flag stay)."""

    @abc.abstractmethod
    def get_schedule(self, name: str) -> ScheduleRow | None: ...

    @abc.abstractmethod
    def list_schedules(self) -> list[ScheduleRow]:
        """Every schedule, by name."""

    @abc.abstractmethod
    def set_schedule_paused(self, name: str, paused: bool, *, now: float) -> bool:
        """Pause or resume a schedule (resuming records `resumed_at`: now). False when no
        schedule has that name."""

    @abc.abstractmethod
    def fire_schedule(
        self,
        name: str,
        *,
        expected_last: float,
        last_tick: float,
        next_tick: float,
        rows: Sequence[ExecutionRow],
        now: float,
    ) -> list[str] | None:
        """In one transaction: move the schedule's last tick from `expected_last` (a
        compare-and-swap; with `rows`, only while it is not paused) to `last_tick`, and
        insert `rows`, the ticks' executions (one whose (flow, dedup_key) exists is left
        out). Returns the ids inserted; None, with nothing written, when the schedule is
        not as expected."""

    # --- memory (tether.memory) ---------------------------------------------------------

    @abc.abstractmethod
    def put_memory(
        self,
        row: MemoryRow,
        blobs: Sequence[tuple[str, str]] = (),
        *,
        fence: tuple[str, str] | None = None,
        if_version: int | None = None,
    ) -> MemoryRow | None:
        """Store the (hash, data) `blobs` not stored yet and `row` as the next version of its
        key, in one transaction. Versions are numbered from 1 without gaps, atomically under
        concurrent writers; `row.version` is ignored. When a version with the same
        `idempotency_key` exists, nothing is written and that version is returned. With
        `fence` (execution id, lease token) nothing is written and None is returned unless
        the token still holds the execution. With `if_version`, nothing is written unless
        the key's latest version is that one (0: the key has no version), else
        MemoryConflictError. Returns the row as stored."""

    @abc.abstractmethod
    def get_memory(
        self, scope: str, scope_id: str, key: str, version: int | None = None
    ) -> MemoryRow | None:
        """One version of a key (the latest when `version` is None), tombstones included."""

    @abc.abstractmethod
    def memory_versions(
        self, scope: str, scope_id: str, key: str, *, up_to: int | None = None
    ) -> list[MemoryRow]:
        """The versions of a key, newest first; only those up to `up_to` when given."""

    @abc.abstractmethod
    def list_memory(
        self, *, scope: str | None, scope_id: str | None, prefix: str | None, limit: int
    ) -> list[MemoryRow]:
        """The latest version of every key whose latest version is not a tombstone, ordered
        by scope, scope id and key: only in `scope` (and `scope_id`) when given, only keys
        that start with `prefix` when given."""

    @abc.abstractmethod
    def get_blobs(self, hashes: Sequence[str]) -> dict[str, str]:
        """The data of the stored blobs among `hashes`, by hash."""


def memory_write_key(execution_id: str, position: str) -> str:
    """The idempotency key of the memory write an execution makes at a flow position: a
    resumed flow writing there again finds its version instead of writing a second one."""
    return f"{execution_id}:{position}"


@dataclass(slots=True)
class MemoryRow:
    """One version of a memory key. A value is one blob (`blob`), or a list: the item hashes
    (`items`, a JSON array) that follow the items of version `base_version` (None: from the
    start); `length` is then the list's length. `size` is the value's JSON size in bytes."""

    scope: str
    scope_id: str
    key: str
    version: int
    deleted: bool = False
    blob: str | None = None
    base_version: int | None = None
    items: str | None = None
    length: int | None = None
    size: int = 0
    created_at: float = 0.0
    writer_execution: str | None = None
    writer_position: str | None = None
    idempotency_key: str | None = None
