"""Client: inspect and operate executions. The CLI and servers are thin layers over it."""

from __future__ import annotations

import base64
import binascii
import builtins
import dataclasses
import datetime as dt
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .._core import imports as _imports
from .._core import publish as _publish
from .._core import schema as _schema
from .._core import serde as _serde
from .._core.config import settings, store_for
from .._core.positions import sort_key
from .._core.status import Status
from .._runtime import replay as _replay
from .._runtime.adoption import SUSPEND_EVENT
from .._runtime.engine import Runnable, load_flow, process_words
from .._runtime.executor import executor
from .._runtime.handle import Handle, stored_execution
from .._runtime.owners import host_prefix
from .._runtime.records import (
    OUTPUT_KINDS,
    Event,
    ExecutionRecord,
    LogRecord,
    MessageRecord,
    WaitRecord,
)
from .._spend import usage as _usage
from .._spend.budget import Budget
from ..errors import (
    ExecutionLocked,
    ExecutionNotFound,
    FlowNotFoundError,
    InputTooLarge,
    InputValidationError,
    InvalidStateError,
    MessageAlreadySent,
    NotPublished,
    ResultTimeout,
    UsageError,
    WaitAlreadyResolved,
    WaitNotFound,
)
from ..store import (
    EventRow,
    ExecutionRow,
    ExecutionStats,
    MessageRow,
    Sent,
    Store,
    WaitRow,
    redact,
)
from . import outlines as _outlines
from . import schedules as _schedules
from . import tokens as _tokens
from .recovery import Follower, Left
from .schedules import ScheduleRecord
from .tokens import TokenInfo


@dataclass(frozen=True, slots=True)
class Skipped:
    """An execution `Client.recover()` left alone: its flow is not loaded in this process.
    `reason` says why; `load_with` is the flag that would load it (`--import agents`,
    `--script path/x.py`), or None when none would."""

    execution_id: str
    flow: str
    reason: str
    load_with: str | None


class Recovered(builtins.list[str]):
    """What `Client.recover()` returns: the ids it resumed (a list); in `skipped` the
    executions it left alone because their flows are not loaded here; in `left` those of the
    executions it followed that are not finished, each with why (a `Left`:
    `execution_id`, `status`, `reason`): input, a timer, or a live process they wait on."""

    def __init__(
        self,
        ids: Iterable[str] = (),
        skipped: Iterable[Skipped] = (),
        left: Iterable[Left] = (),
    ) -> None:
        super().__init__(ids)
        self.skipped: builtins.list[Skipped] = builtins.list(skipped)
        self.left: builtins.list[Left] = builtins.list(left)


_TAKEABLE = (Status.QUEUED.value, Status.RUNNING.value, Status.WAITING.value)
# Client.get() shows at most this many children (the newest).
_MAX_CHILDREN = 1000
# An ambiguous id prefix lists at most this many of the ids it matches.
_MAX_CANDIDATES = 10


@dataclass(frozen=True, slots=True)
class Page:
    """One page of executions, newest first; `next` is the cursor of the page after it
    (None: this is the last one)."""

    items: list[ExecutionRecord]
    next: str | None


class Client:
    """Inspect and operate executions in a store.

    ```python
    client = tether.Client()              # the configured store (TETHER_DB or default)
    record = client.get(execution_id)
    for cp in record.checkpoints:
        print(cp.position, cp.name, cp.status, cp.duration)
    client.input(execution_id, "approve", True)
    client.recover()                      # resume everything whose process died
    ```

    `Client(readonly=True)` opens the store read-only: nothing is migrated or written (a
    database on read-only media, or a PostgreSQL role that may only SELECT, can be read), and
    the methods that write raise `tether.errors.StoreOpenedReadOnly`. The default follows
    `configure(readonly=...)` (False).
    """

    def __init__(self, db: str | None = None, *, readonly: bool | None = None) -> None:
        self._store: Store = store_for(db, readonly=readonly)
        self._outlines = _outlines.Outlines()

    @property
    def db(self) -> str:
        return self._store.url

    # --- reading ------------------------------------------------------------------------

    def resolve_id(self, id_or_prefix: str) -> str:
        """The full id of the execution whose id is `id_or_prefix` or, failing that, the one
        execution whose id starts with it (as git takes a short commit hash).
        ExecutionNotFound when none matches; UsageError listing the candidates when several
        do."""
        if not isinstance(id_or_prefix, str) or not id_or_prefix:
            raise UsageError(f"an execution id is a non-empty string, not {id_or_prefix!r}")
        if self._store.get_execution(id_or_prefix) is not None:
            return id_or_prefix
        found = self._store.execution_ids(id_or_prefix, limit=_MAX_CANDIDATES + 1)
        if len(found) == 1:
            return found[0]
        if not found:
            raise ExecutionNotFound(
                f"no execution {id_or_prefix} in {redact(self._store.url)} (no id starts with it; "
                "`tether executions list` shows the ids)"
            )
        shown = ", ".join(found[:_MAX_CANDIDATES])
        more = " and more" if len(found) > _MAX_CANDIDATES else ""
        raise UsageError(
            f"{id_or_prefix!r} is the start of several execution ids ({shown}{more}); "
            "give more of the id"
        )

    def get(
        self,
        execution_id: str,
        *,
        checkpoint_offset: int = 0,
        checkpoint_limit: int | None = None,
    ) -> ExecutionRecord:
        """One execution with its checkpoint calls, waits, events, children (the child
        flows its flow code started, oldest first) and the messages sent to its waits.

        With `checkpoint_limit` (and `checkpoint_offset`), `checkpoints` holds only that
        window of the calls in program order; `checkpoint_count`, `checkpoints_done` and
        `usage` still count them all. A page for an execution with thousands of calls then
        reads and decodes the results it shows, not every one; while the execution is
        finished, this Client keeps the count, order and usage of its calls between pages."""
        if checkpoint_offset < 0 or (checkpoint_limit is not None and checkpoint_limit < 0):
            raise UsageError(
                f"checkpoint_offset and checkpoint_limit are 0 or more, not "
                f"{checkpoint_offset} and {checkpoint_limit}"
            )
        row = self._row(execution_id)
        children = self._store.list_executions(
            statuses=None, flow=None, limit=_MAX_CHILDREN, parent=execution_id
        )
        events = self._store.get_events(execution_id)
        windowed = checkpoint_limit is not None or checkpoint_offset > 0
        if windowed:
            outline = self._outline(row)
            end = None if checkpoint_limit is None else checkpoint_offset + checkpoint_limit
            shown = outline.positions[checkpoint_offset:end]
            calls = self._store.get_checkpoints_at(execution_id, shown)
        else:
            calls = self._store.get_checkpoints(execution_id)
        record = ExecutionRecord.from_row(
            row,
            calls,
            events,
            self._store.get_waits(execution_id),
            children=[ExecutionRecord.from_row(c) for c in reversed(children)],
            messages=self._store.get_messages(execution_id),
        )
        if not windowed:
            return record
        return dataclasses.replace(
            record,
            checkpoint_count=len(outline.positions),
            checkpoints_done=outline.succeeded,
            usage=outline.usage + _usage.forgotten(events),
        )

    def summary(self, execution_id: str) -> ExecutionRecord:
        """One execution without its calls, waits, events or children (one read: cheap to
        poll)."""
        return ExecutionRecord.from_row(self._row(execution_id))

    def list(
        self,
        status: Status | str | Iterable[Status | str] | None = None,
        flow: str | None = None,
        limit: int = 100,
        *,
        parent: str | None = None,
    ) -> builtins.list[ExecutionRecord]:
        """Executions, newest first, filtered by status (one or several) and flow name;
        with `parent`, only the children of that execution (child flows it started)."""
        _check_limit(limit)
        statuses = None if status is None else _statuses(status)
        rows = self._store.list_executions(statuses=statuses, flow=flow, limit=limit, parent=parent)
        return [ExecutionRecord.from_row(r) for r in rows]

    def page(
        self,
        status: Status | str | Iterable[Status | str] | None = None,
        flow: str | None = None,
        limit: int = 100,
        *,
        parent: str | None = None,
        cursor: str | None = None,
        queue: str | None = None,
        id_prefix: str | None = None,
    ) -> Page:
        """`list()` a page at a time: pass the `next` of one page as the `cursor` of the
        following one. Pages are cut by (creation time, id), so executions started meanwhile
        never shift a page or show twice. `queue` and `id_prefix` (ids that start with it)
        narrow the page further."""
        _check_limit(limit)
        statuses = None if status is None else _statuses(status)
        rows = self._store.list_executions(
            statuses=statuses,
            flow=flow,
            limit=limit + 1,
            parent=parent,
            before=_cursor(cursor),
            queue=queue,
            id_prefix=id_prefix,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if more else None
        return Page(
            [ExecutionRecord.from_row(r) for r in rows],
            None if last is None else _encode_cursor(last.created_at, last.id),
        )

    def usage(
        self, *, flow: str | None = None, since: dt.datetime | float | None = None
    ) -> _usage.Usage:
        """What model calls spent in all executions (of `flow`; created at or after
        `since`, a datetime or a Unix time), forgotten calls of retries included. Reads every
        recorded call that has usage: meant for reports, not for a loop."""
        start = since.timestamp() if isinstance(since, dt.datetime) else since
        texts = self._store.usage_records(flow=flow, since=start)
        return _usage.total(_usage.from_metadata(text) for text in texts)

    def stats(self) -> ExecutionStats:
        """Executions by status and queue, the oldest queued one, pending waits (what a
        monitoring system or an autoscaler reads)."""
        return self._store.execution_stats()

    def status_counts(
        self,
        cap: int = 10_000,
        *,
        flow: str | None = None,
        parent: str | None = None,
        queue: str | None = None,
        id_prefix: str | None = None,
    ) -> dict[Status, int]:
        """How many executions have each status, counting at most `cap` of each (a count
        equal to `cap` means "that many or more"), so its cost does not grow with the store
        (what a page that shows the counts on every load wants; `stats()` counts exactly).
        The filters select as `page()`'s do, so counts shown beside a filtered list add up
        to what that list holds."""
        _check_limit(cap)
        found = self._store.count_by_status(
            [s.value for s in Status],
            cap=cap,
            flow=flow,
            parent=parent,
            queue=queue,
            id_prefix=id_prefix,
        )
        return {s: found.get(s.value, 0) for s in Status}

    def pending_waits(self, flow: str | None = None, limit: int = 100) -> builtins.list[WaitRecord]:
        """Waits that need input, oldest first: execution, name, question, `json_schema` of
        the expected value, deadline, and since when (`created_at`)."""
        _check_limit(limit)
        rows = self._store.pending_waits(flow=flow, limit=limit)
        return [WaitRecord.from_row(r.wait, r.flow) for r in rows]

    def handle(self, execution_id: str) -> Handle[Any]:
        """A Handle on an existing execution (to wait for its result)."""
        self._row(execution_id)
        return Handle(execution_id, self._store)

    def attention(self, record: ExecutionRecord) -> str | None:
        """Why nobody moves this execution forward, and what to do; None when nothing is
        wrong. Today: it is `running` (or `queued` under a lease) but the process that held
        it is gone (it ran on this host and its pid is dead) or its lease expired. A
        `tether worker` takes such executions over by itself; without one, they stay as they
        are until someone resumes them."""
        if record.owner is None or record.status not in (Status.RUNNING, Status.QUEUED):
            return None
        now = time.time()
        expires = record.lease_expires.timestamp() if record.lease_expires else None
        if not executor().owner_gone(record.owner, expires, now):
            return None
        holder = process_words(record.owner)
        if expires is not None and expires < now:
            at = dt.datetime.fromtimestamp(expires, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            why = (
                f"its lease expired at {at}: the process that ran it ({holder}) stopped renewing it"
            )
        else:
            why = f"the process that ran it ({holder}) is gone"
        return (
            f"{why}. Nothing runs it now: a running `tether worker` takes it over (on another "
            f"host, once the lease has expired), or run `tether executions resume {record.id}`"
        )

    def continuation(self, execution_id: str) -> Continuation:
        """Who will continue an execution once it has what it waits for: the process running
        it, the process that parked it while it waited (if it is alive), or a `tether
        worker`. `live` is False when no live process will (it ran on this host and that
        process is gone, so it needs a worker or `resume`), None when it depends on whether
        a worker runs. Ask before `input()`: after it, the execution may run or be done."""
        row = self._row(execution_id)
        status = Status(row.status)
        resume = f"`tether executions resume {row.id}`"
        if status.finished:
            return Continuation(True, f"execution {row.id} already {status.value}")
        now = time.time()
        runner = executor()
        if row.owner is not None:
            if not runner.owner_gone(row.owner, row.lease_expires, now):
                return Continuation(True, f"it runs in {process_words(row.owner)}")
            stranded = self.attention(ExecutionRecord.from_row(row))
            if stranded is not None:
                return Continuation(None, f"nobody runs it now: {stranded}")
        notes = self._store.get_events(row.id, kinds=(SUSPEND_EVENT,))
        data = json.loads(notes[-1].data) if notes and notes[-1].data else {}
        owner = data.get("owner") if isinstance(data, dict) else None
        worker = f"a `tether worker` continues it; if none runs, start one, or run {resume}"
        if not isinstance(owner, str):
            return Continuation(None, worker)
        holder = process_words(owner)
        if not data.get("parked"):
            return Continuation(None, f"it was suspended by a worker ({holder}): {worker}")
        if owner == runner.owner:
            return Continuation(True, "this process continues it")
        if runner.owner_gone(owner, float("inf"), now):
            return Continuation(
                False,
                f"no live process will pick it up: the process that started it ({holder}) is "
                f"gone. Start a `tether worker`, or run {resume}",
            )
        if owner.startswith(host_prefix()):
            return Continuation(True, f"the process that started it ({holder}) continues it")
        return Continuation(
            None,
            f"the process that started it ({holder}) continues it if it still runs; else {worker}",
        )

    # --- input --------------------------------------------------------------------------

    def input(
        self,
        execution_id: str,
        name: str | None = None,
        value: Any = None,
        *,
        by: str | None = None,
    ) -> WaitRecord:
        """Give a waiting execution its input. The execution becomes runnable at once, and an
        executor (the process that started it, if alive, or a worker) resumes it.

        `name` may be left out when the execution has exactly one pending wait. The value is
        validated against the wait's schema: InputValidationError (nothing stored, the
        execution untouched) when it does not match. Of two inputs to one wait exactly one
        wins; the other raises WaitAlreadyResolved.
        """
        return self._give(execution_id, name, value, by=by, from_json=False)

    def input_json(
        self, execution_id: str, name: str | None, value_json: str | bytes, *, by: str | None = None
    ) -> WaitRecord:
        """`input()` with the value as JSON text (from a CLI or an HTTP body), validated as
        JSON against the wait's schema."""
        limit = settings().max_input_bytes
        if len(value_json) > limit:
            raise InputTooLarge(_too_large(len(value_json), limit))
        return self._give(execution_id, name, value_json, by=by, from_json=True)

    def _give(
        self, execution_id: str, name: str | None, value: Any, *, by: str | None, from_json: bool
    ) -> WaitRecord:
        row = self._row(execution_id)
        if Status(row.status).finished:
            raise InvalidStateError(
                f"execution {execution_id} already {row.status}; it takes no more input"
            )
        wait = self._pending_wait(execution_id, name)
        text = _validated_text(wait, value, from_json=from_json)
        now = settings().clock()
        if not self._store.resolve_wait(
            execution_id, wait.name, status="resolved", value=text, by=by, now=now
        ):
            if any(
                m.name == wait.name and m.status == "sent"
                for m in self._store.get_messages(execution_id)
            ):
                raise WaitAlreadyResolved(
                    f"wait {wait.name!r} of execution {execution_id} is getting the message "
                    "sent to it earlier (Client.send); it takes no other input unless that "
                    "one is rejected"
                )
            raise WaitAlreadyResolved(
                f"wait {wait.name!r} of execution {execution_id} already has its input "
                "(another input won, or it timed out)"
            )
        self._store.add_event(
            EventRow(execution_id, wait.position, time.time(), "info", "input",
                     f"input given to wait {wait.name!r}" + (f" by {by}" if by else ""))
        )  # fmt: skip
        executor().poke(execution_id)
        wait.status, wait.value, wait.resolved_by, wait.resolved_at = "resolved", text, by, now
        return WaitRecord.from_row(wait, row.flow)

    def _pending_wait(self, execution_id: str, name: str | None) -> WaitRow:
        waits = self._store.get_waits(execution_id)
        pending = [w for w in waits if w.status == "pending" and w.kind == "input"]
        if name is None:
            if len(pending) == 1:
                return pending[0]
            if not pending:
                raise WaitNotFound(f"execution {execution_id} has no pending wait")
            names = ", ".join(repr(w.name) for w in pending)
            raise UsageError(
                f"execution {execution_id} has {len(pending)} pending waits ({names}); "
                "say which one gets the input"
            )
        for wait in waits:
            if wait.name == name:
                if wait.kind != "input":
                    what = "a wait for a child flow" if wait.kind == "child" else "a durable sleep"
                    raise UsageError(f"{name!r} is {what}; it takes no input")
                if wait.status != "pending":
                    raise WaitAlreadyResolved(
                        f"wait {name!r} of execution {execution_id} is already {wait.status}"
                    )
                return wait
        known = ", ".join(repr(w.name) for w in pending) or "none"
        if any(m.name == name for m in self._store.get_messages(execution_id)):
            early = "a value sent to it is kept until the flow reaches it (`get` shows it)"
        else:
            early = (
                "if the flow has not reached that wait yet, send the value instead: it is kept "
                f"until the wait is reached (Client.send, `tether executions send {execution_id}"
                f" {name} --value ...`)"
            )
        raise WaitNotFound(
            f"execution {execution_id} has no wait {name!r} (pending waits: {known}); {early}"
        )

    # --- published values ---------------------------------------------------------------

    def get_published(self, execution_id: str, key: str, timeout: float | None = None) -> Any:
        """The latest value the execution published under `key` (`tether.publish`), as soon
        as one exists: waits for it up to `timeout` seconds (None: as long as the execution
        may still publish one), then raises ResultTimeout. Raises NotPublished when the
        execution ended without publishing that key.

        ```python
        plan = client.get_published(execution_id, "plan", timeout=30)
        ```
        """
        if not isinstance(key, str) or not key:
            raise UsageError(f"a published value's key is a non-empty string, not {key!r}")
        if timeout is not None and timeout < 0:
            raise UsageError(f"timeout is 0 or more seconds, or None, not {timeout!r}")
        name = _publish.call_name(key)
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.01
        while True:
            # The status first: an execution seen finished has published all it ever will.
            ended = Status(self._row(execution_id).status).finished
            call = self._store.latest_call(execution_id, name)
            if call is not None:
                if call.result is None:
                    return None
                return _serde.loads(call.result, root=f"value published as {key!r}")
            if ended:
                raise NotPublished(
                    f"execution {execution_id} has ended and published no value as {key!r}"
                )
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ResultTimeout(
                    f"execution {execution_id} published no value as {key!r} within "
                    f"{timeout} s; it is still {self._row(execution_id).status}"
                )
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, 0.2)

    # --- messages -----------------------------------------------------------------------

    def send(
        self, execution_id: str, name: str, value: Any = None, *, by: str | None = None
    ) -> MessageRecord:
        """Send `value` to the wait `name` of an execution, whether the flow waits there now
        or reaches that wait later: a webhook's callback that may arrive before the flow
        asks for it.

        ```python
        client.send(execution_id, "paid", {"amount": 1200}, by="stripe")
        ```

        A pending wait gets it at once, validated like `input()` (InputValidationError
        when it does not match, nothing stored). Otherwise it is stored (it survives
        crashes) and delivered when the flow reaches the wait, validated there against
        the wait's schema: a value that does not match is recorded as `rejected` (visible
        in `get()`, with why) and the wait stays pending. The returned record's `status`
        says which: `delivered` or `sent`. A waiting execution becomes runnable.

        One message per wait: a second send before delivery raises MessageAlreadySent; a
        send to a wait that has its input raises WaitAlreadyResolved; of a send and an input
        to one wait exactly one wins. An execution that has finished (or was cancelled)
        takes no messages: InvalidStateError.
        """
        return self._send(execution_id, name, value, by=by, from_json=False)

    def send_json(
        self, execution_id: str, name: str, value_json: str | bytes, *, by: str | None = None
    ) -> MessageRecord:
        """`send()` with the value as JSON text (from a CLI or an HTTP body)."""
        limit = settings().max_input_bytes
        if len(value_json) > limit:
            raise InputTooLarge(_too_large(len(value_json), limit))
        return self._send(execution_id, name, value_json, by=by, from_json=True)

    def _send(
        self, execution_id: str, name: str, value: Any, *, by: str | None, from_json: bool
    ) -> MessageRecord:
        if not isinstance(name, str) or not name:
            raise UsageError(f"send() needs a wait's name (a non-empty string), not {name!r}")
        if name.startswith("child:"):
            raise UsageError(f"{name!r} names a wait for a child flow; it takes no input")
        row = self._row(execution_id)
        if Status(row.status).finished:
            raise InvalidStateError(_no_messages(execution_id, row.status))
        # The wait may be recorded between this read and the store's transaction: the store
        # then asks for the value validated against its schema (VALIDATE): read it again.
        for _ in range(3):
            wait = next((w for w in self._store.get_waits(execution_id) if w.name == name), None)
            pending = wait is not None and wait.kind == "input" and wait.status == "pending"
            if wait is not None and pending:
                text = _validated_text(wait, value, from_json=from_json)
            else:
                text = _unvalidated_text(name, value, from_json=from_json)
            now = settings().clock()
            message = MessageRow(execution_id, name, text, "sent", by, now)
            outcome = self._store.send_message(message, validated=pending, now=now)
            if outcome is not Sent.VALIDATE:
                break
        if outcome is Sent.NOT_FOUND:
            raise ExecutionNotFound(f"no execution {execution_id} in {self._store.url}")
        if outcome is Sent.FINISHED:
            raise InvalidStateError(_no_messages(execution_id, self._row(execution_id).status))
        if outcome is Sent.DUPLICATE:
            raise MessageAlreadySent(
                f"wait {name!r} of execution {execution_id} has a message sent to it already, "
                "not delivered yet; one message per wait (`tether executions get` shows it)"
            )
        if outcome is Sent.ANSWERED:
            raise WaitAlreadyResolved(
                f"wait {name!r} of execution {execution_id} already has its input (or timed out)"
            )
        if outcome is Sent.NOT_INPUT:
            raise UsageError(f"{name!r} is a sleep or a wait for a child flow; it takes no input")
        if outcome is Sent.VALIDATE:
            raise InvalidStateError(
                f"wait {name!r} of execution {execution_id} kept changing while the value was "
                "sent; nothing was sent, send it again"
            )
        delivered = outcome is Sent.DELIVERED
        what = "given to" if delivered else "sent to (kept until the flow reaches)"
        self._store.add_event(
            EventRow(execution_id, wait.position if delivered and wait else None, time.time(),
                     "info", "input", f"input {what} wait {name!r}" + (f" by {by}" if by else ""))
        )  # fmt: skip
        executor().poke()
        return MessageRecord.from_row(
            MessageRow(
                execution_id, name, text, "delivered" if delivered else "sent", by, now,
                delivered_at=now if delivered else None,
            )
        )  # fmt: skip

    # --- running ------------------------------------------------------------------------

    def resume(self, execution_id: str) -> Handle[Any]:
        """Continue an unfinished execution in this process, re-entering its flow from the top.

        Refused with ExecutionLocked while another live process holds it. Raises
        FlowNotFoundError, changing nothing, when its flow is not loaded here: this process
        runs the flows it imported itself or that `TETHER_IMPORTS` / `[tool.tether] imports`
        name, never the module or script an execution's row names. In a client-only process
        (`configure(executor=False)`) the execution is handed to the workers instead.
        """
        row = self._row(execution_id)
        status = Status(row.status)
        if status.finished:
            raise InvalidStateError(
                f"execution {execution_id} already {status.value}; there is nothing to resume"
            )
        runner = executor()
        if runner.holds(self._store, execution_id):
            raise ExecutionLocked(f"execution {execution_id} is already running in this process")
        now = time.time()
        if not runner.owner_gone(row.owner, row.lease_expires, now):
            raise ExecutionLocked(_locked_message(row, now))
        local = settings().executor
        flow = self._flow(row) if local else None
        token = self._take(row, now)
        if token is None:
            raise ExecutionLocked(
                f"execution {execution_id} was taken by another process just now; "
                "check Client.get(id).owner"
            )
        if local:
            runner.start(self._store, execution_id, token, flow)
        else:
            self._store.release(execution_id, token, status=Status.QUEUED, now=now)
        return Handle(execution_id, self._store)

    def cancel(self, execution_id: str) -> Status:
        """Cancel an execution. One that runs stops at its next checkpoint boundary; one that
        nobody runs (queued, waiting, sleeping) is cancelled at once. Its unfinished child
        flows (and theirs) are cancelled with it, in the same transaction. Returns the status
        after the request."""
        self._row(execution_id)
        executor().cancel_local(self._store, execution_id)
        status = self._store.request_cancel(execution_id, now=time.time())
        if status is None:
            raise ExecutionNotFound(f"no execution {execution_id} in {redact(self._store.url)}")
        return Status(status)

    def recover(self, *, wait: bool = True) -> Recovered:
        """Resume in this process every execution that should be running and is not: its
        owner died or its lease expired, it is queued with nobody on it, or its input or
        timer arrived; then follow them to the end. Returns the ids resumed (a list); its
        `skipped` lists the executions left alone because their flow is not loaded in this
        process, each with the flag that would load it. (A `tether worker` does this
        continuously.)

        With `wait` (the default) it returns once the executions it resumed, and the
        parents they unblock (a child's end makes its waiting parent runnable), are finished
        or wait on something outside this process: input, a timer, a live process. Those
        are in `left`, each with the reason. `wait=False` returns at once; they run on in
        this process. A client-only process (`executor=False`) queues them for the workers
        and returns at once.
        """
        runner = executor()
        now, due = time.time(), settings().clock()
        if settings().executor:
            _imports.load_configured()
        # By id: a running row whose lease expired is offered by both passes below.
        skipped: dict[str, Skipped] = {}

        def loaded(row: ExecutionRow) -> bool:
            if row.id in skipped:
                return False
            reason = self._not_loaded(row)
            if reason is not None:
                skipped[row.id] = Skipped(row.id, row.flow, str(reason), reason.load_with)
            return reason is None

        # Owners killed on this host still have unexpired leases: take those over first.
        taken = runner.take_over_dead(self._store, now, loaded, limit=10_000)
        for row in self._store.runnable(now=now, due=due, limit=10_000):
            if runner.holds(self._store, row.id) or not loaded(row):
                continue
            claim = runner.claim()
            if self._store.claim_runnable(claim, now=now, due=due, ids=[row.id]) is not None:
                taken.append((row.id, claim.token))
        for execution_id, token in taken:
            self._run_or_requeue(execution_id, token, now)
        resumed = [execution_id for execution_id, _ in taken]
        if not wait or not settings().executor:
            return Recovered(resumed, skipped.values())
        follower = Follower(self._store, runner, resumed, loaded, process_words)
        left = follower.run()
        return Recovered(follower.resumed, skipped.values(), left)

    def retry(self, execution_id: str) -> Handle[Any]:
        """Run a failed execution again, same id: recorded results are reused; the failed
        checkpoint call and everything after it run again, with the current code.

        A child flow whose failure the execution recorded counts as a failed call where it
        was awaited: the child is retried too (recursively), and awaited again. Children
        started before the retry point keep their recorded outcomes; a child started at a
        position that runs again is the same child (its id is derived from the position),
        never a second one."""
        row = self._row(execution_id)
        if row.status != Status.FAILED:
            raise InvalidStateError(
                f"execution {execution_id} is {row.status}; only a failed execution can be "
                "retried (replay makes a new execution from any other)"
            )
        calls = self._store.get_checkpoints(execution_id)
        waits = self._store.get_waits(execution_id)
        failed = [c.position for c in calls if c.status == "failed"]
        # A child flow that failed counts as a failed call at the position it was awaited.
        failed_children = [w for w in waits if _failed_child(w)]
        failed += [w.position for w in failed_children]
        from_position = (
            min(failed, key=sort_key) if failed else _replay.end_position(c.position for c in calls)
        )
        start = sort_key(from_position)
        forget = [c for c in calls if sort_key(c.position) >= start]
        forgotten_waits = [w for w in waits if sort_key(w.position) >= start]
        forget_waits = [w.name for w in forgotten_waits]
        flow = self._flow(row) if settings().executor else None
        # The failed children awaited from there on are retried first (same id, their own
        # recorded calls reused), so that the parent, awaiting them again, finds them running.
        # The start of a child stays recorded: a retry never starts a second child for a call.
        for wait in forgotten_waits:
            if _failed_child(wait) and wait.resolved_by is not None:
                child = self._store.get_execution(wait.resolved_by)
                if child is not None and child.status == Status.FAILED:
                    self.retry(child.id)
        now = time.time()
        if not self._store.reset_for_retry(
            execution_id, positions=[c.position for c in forget], waits=forget_waits, now=now
        ):
            raise InvalidStateError(f"execution {execution_id} changed while retrying it")
        # What the forgotten calls spent was spent: keep it in the event, for the totals.
        forgotten = _usage.total(_usage.from_metadata(c.metadata) for c in forget)
        self._store.add_event(
            EventRow(execution_id, from_position, now, "info", _usage.RETRY_EVENT,
                     f"retried from position {from_position}",
                     _serde.dumps({_usage.KEY: _usage.encode(forgotten)}) if forgotten else None)
        )  # fmt: skip
        if flow is not None:
            token = self._take(self._row(execution_id), now)
            if token is not None:
                executor().start(self._store, execution_id, token, flow)
        return Handle(execution_id, self._store)

    def replay(
        self,
        execution_id: str,
        *,
        from_: str | int,
        overrides: Mapping[str, Any] | None = None,
        args: Sequence[Any] | Mapping[str, Any] | None = None,
        budget: Budget | None = None,
    ) -> Handle[Any]:
        """Fork an execution into a new one: recorded results are reused for every checkpoint
        call before `from_`, `overrides` replace the results of the named calls there, and
        from `from_` on it runs live with the current code. The source is untouched; the new
        execution's `replay_of` links to it.

        - `from_`: a checkpoint name (its first call), `name#k` (its k-th call, from 1), or a
          position; or a wait or sleep, by name or position (the fork asks or sleeps again);
          ambiguous or unknown selectors raise UsageError listing the candidates.
        - `overrides`: `{selector: value}`; a bare name overrides every call of that name
          before the fork point.
        - `args`: new arguments for the flow: a list (positional) or a dict (keywords).
        - `budget`: the new execution's `tether.Budget` (default: the source's). The new
          execution's usage counts only the calls it makes itself: the copied calls were paid
          for by the source.
        """
        return _replay.replay(
            self._store, execution_id, from_=from_, overrides=overrides, args=args, budget=budget
        )

    def prune(
        self,
        older_than: float | dt.timedelta,
        *,
        status: Status | str | Iterable[Status | str] | None = None,
        dry_run: bool = False,
    ) -> int:
        """Delete finished executions (and all that is recorded about them) that finished more
        than `older_than` (seconds or a timedelta) ago. `status` narrows which finished ones
        (default: succeeded, failed and cancelled). Returns how many were (or, with
        `dry_run`, would be) deleted."""
        seconds = older_than.total_seconds() if isinstance(older_than, dt.timedelta) else older_than
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise UsageError(f"older_than must be 0 or more seconds, not {older_than!r}")
        finished = [s.value for s in Status if s.finished]
        if status is None:
            statuses = finished
        else:
            items = [status] if isinstance(status, str) else builtins.list(status)
            statuses = [_status(s) for s in items]
            unfinished = [s for s in statuses if s not in finished]
            if unfinished:
                raise UsageError(
                    f"prune deletes finished executions only, not {', '.join(unfinished)}; "
                    "cancel them first"
                )
        return self._store.prune(before=time.time() - seconds, statuses=statuses, dry_run=dry_run)

    def logs(
        self, execution_id: str, *, checkpoint: str | None = None, after: int = 0
    ) -> builtins.list[LogRecord]:
        """What the execution's checkpoint calls printed and logged, in order. `checkpoint`
        keeps one checkpoint's calls (a name, `name#k` or a position); `after` keeps only
        records after that `LogRecord.id` (to follow a running execution)."""
        self._row(execution_id)
        events = self._store.get_events(execution_id, after=after, kinds=OUTPUT_KINDS)
        positions: set[str] = set()
        if checkpoint is not None:
            calls = self._store.get_checkpoints(execution_id)
            positions = {c.position for c in _replay.select_all(calls, checkpoint)}
        else:
            # Only the calls that logged: an execution with thousands of calls is not read
            # whole (results included) to name a few.
            logged = sorted({e.position for e in events if e.position is not None})
            calls = self._store.get_checkpoints_at(execution_id, logged)
        names = {c.position: c.name for c in calls}
        return [
            LogRecord.from_row(e, names.get(e.position) if e.position is not None else None)
            for e in events
            if checkpoint is None or e.position in positions
        ]

    # --- API tokens (tether server) -----------------------------------------------------

    def create_token(self, name: str, scope: str = "read") -> str:
        """A new API token for `tether server`: `read` (look only), `operate` (also give
        input, start, cancel, resume, retry, replay, write memory) or `admin` (everything).
        Returns the secret, which is shown only now: the store keeps its hash."""
        return _tokens.create(self._store, name, scope)

    def tokens(self) -> builtins.list[TokenInfo]:
        """Every API token, revoked ones included, by name (never their secrets)."""
        return [TokenInfo.from_row(r) for r in self._store.list_tokens()]

    def revoke_token(self, name: str) -> None:
        """Revoke an API token: requests that carry it are refused from now on."""
        _tokens.revoke(self._store, name)

    def authenticate(self, secret: str) -> TokenInfo | None:
        """The active token whose secret `secret` is, or None (unknown or revoked)."""
        return _tokens.check(self._store, secret)

    def schedules(self) -> builtins.list[ScheduleRecord]:
        """Every schedule in the store, by name: spec, paused, last and next tick."""
        return [ScheduleRecord.from_row(r) for r in self._store.list_schedules()]

    def pause_schedule(self, name: str) -> ScheduleRecord:
        """Pause a schedule across the fleet: its ticks pass without starting executions
        (resuming does not fire them later). `ScheduleNotFound` lists the known names."""
        return _schedules.set_paused(self._store, name, True)

    def resume_schedule(self, name: str) -> ScheduleRecord:
        """Resume a paused schedule: its next tick starts an execution again."""
        return _schedules.set_paused(self._store, name, False)

    def token_signing_keys(self) -> dict[str, tuple[TokenInfo, bytes]]:
        """The active API tokens by name, each with a key to sign what stands for it (the
        dashboard's session cookies): the same in every process on this store, and void
        once the token is revoked."""
        return _tokens.signing_keys(self._store)

    def events(self, execution_id: str, *, after: int = 0) -> builtins.list[Event]:
        """Everything noted on an execution (output, logs, warnings, input, retries...), in
        the order it was added; only events with an `id` above `after` (to follow it)."""
        return [Event.from_row(e) for e in self._store.get_events(execution_id, after=after)]

    # --- internals ----------------------------------------------------------------------

    def _run_or_requeue(self, execution_id: str, token: str, now: float) -> None:
        """An execution this process just took (`running` under `token`): run it here, or,
        in a client-only process, hand it to the workers."""
        if settings().executor:
            executor().start(self._store, execution_id, token, None, claimed=True)
        else:
            self._store.release(execution_id, token, status=Status.QUEUED, now=now)

    def _not_loaded(self, row: ExecutionRow) -> FlowNotFoundError | None:
        """Why this process cannot run the execution's flow (recorded as an event on it),
        or None when it can."""
        if not settings().executor:
            return None  # not run here: the workers load it
        try:
            load_flow(row.import_path, row.script)
        except FlowNotFoundError as exc:
            self._store.add_event(
                EventRow(row.id, None, time.time(), "warning", "recover",
                         f"recover skipped it: {exc}")
            )  # fmt: skip
            return exc
        return None

    def _flow(self, row: ExecutionRow) -> Runnable:
        """The execution's flow, among those loaded here (the configured imports first)."""
        _imports.load_configured()
        return load_flow(row.import_path, row.script)

    def _row(self, execution_id: str) -> ExecutionRow:
        return stored_execution(self._store, execution_id)

    def _outline(self, row: ExecutionRow) -> _outlines.Outline:
        """The outline of an execution's calls; kept while it is finished (see `_outlines`)."""
        key = (row.id, row.status, row.updated_at)
        finished = Status(row.status).finished
        if finished and (kept := self._outlines.get(key)) is not None:
            return kept
        read = self._store.checkpoint_outline(row.id)
        outline = _outlines.Outline(
            tuple(read.positions),
            read.succeeded,
            _usage.total(_usage.from_metadata(m) for m in read.usage),
        )
        if finished:
            self._outlines.put(key, outline)
        return outline

    def _take(self, row: ExecutionRow, now: float) -> str | None:
        """Compare-and-swap the lease to this process; the new token, or None if we lost."""
        claim = executor().claim()
        taken = self._store.claim(
            row.id,
            claim,
            from_statuses=_TAKEABLE,
            expected_token=row.lease_token,
            now=now,
            status=Status.QUEUED,
        )
        return claim.token if taken else None


@dataclass(frozen=True, slots=True)
class Continuation:
    """Who continues an execution (`Client.continuation`): `live` is True when a live
    process will, False when none will (start a worker or resume it), None when it depends
    on whether a `tether worker` runs; `message` says so in words."""

    live: bool | None
    message: str


def _failed_child(wait: WaitRow) -> bool:
    """A wait for a child flow, resolved with the child's failure."""
    if wait.kind != "child" or wait.status != "resolved" or wait.value is None:
        return False
    return bool(json.loads(wait.value).get("status") == Status.FAILED)


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise UsageError(f"limit must be at least 1, not {limit}")


def _statuses(status: Status | str | Iterable[Status | str]) -> builtins.list[str]:
    items = [status] if isinstance(status, str) else builtins.list(status)
    return [_status(s) for s in items]


def _encode_cursor(created_at: float, execution_id: str) -> str:
    # The stored float itself (JSON keeps it exact), not the record's datetime, which keeps
    # microseconds only: a rounded key would skip or repeat rows at the page's edge.
    raw = json.dumps([created_at, execution_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor(cursor: str | None) -> tuple[float, str] | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, execution_id = json.loads(raw)
        if isinstance(created_at, bool) or not isinstance(created_at, int | float):
            raise ValueError(created_at)
        if not isinstance(execution_id, str):
            raise ValueError(execution_id)
    except (ValueError, TypeError, binascii.Error):
        raise UsageError(
            f"cursor {cursor!r} is not one this server gave; pass the `next` of the "
            "previous page as it is, or leave it out for the first page"
        ) from None
    return float(created_at), execution_id


def _status(value: Status | str) -> str:
    try:
        return Status(value).value
    except ValueError:
        choices = ", ".join(s.value for s in Status)
        raise UsageError(f"unknown status {value!r}; choose from {choices}") from None


def _validated_text(wait: WaitRow, value: Any, *, from_json: bool) -> str:
    """Input validated against the wait's schema, as stored text."""
    try:
        validated = _schema.validate(wait.schema_ref, value, from_json=from_json)
    except ValidationError as exc:
        errors = _schema.errors_of(exc)
        details = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in errors
        )
        raise InputValidationError(
            f"input for wait {wait.name!r} of execution {wait.execution_id} does not match its "
            f"schema: {details}",
            errors,
        ) from None
    except json.JSONDecodeError as exc:
        raise InputValidationError(f"input is not valid JSON: {exc}") from None
    return _limited(_serde.dumps(validated, root=f"input for wait {wait.name!r}"))


def _unvalidated_text(name: str, value: Any, *, from_json: bool) -> str:
    """A message for a wait not reached yet, as stored text: the flow validates it when it
    reaches the wait (it has the schema; nothing here does)."""
    if from_json:
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InputValidationError(f"input is not valid JSON: {exc}") from None
    return _limited(_serde.dumps(value, root=f"message for wait {name!r}"))


def _no_messages(execution_id: str, status: str) -> str:
    return f"execution {execution_id} already {status}; it takes no more messages or input"


def _limited(text: str) -> str:
    limit = settings().max_input_bytes
    if len(text) > limit:
        raise InputTooLarge(_too_large(len(text), limit))
    return text


def _too_large(size: int, limit: int) -> str:
    return (
        f"input is {size:,} bytes, over the limit of {limit:,} "
        "(tether.configure(max_input_bytes=...) raises it); store large data elsewhere and "
        "pass a reference"
    )


def _locked_message(row: ExecutionRow, now: float) -> str:
    expires = row.lease_expires or now
    until = dt.datetime.fromtimestamp(expires, dt.UTC).strftime("%H:%M:%S UTC")
    return (
        f"execution {row.id} is held by the live process {row.owner} (lease until {until}); "
        "it is still running there. Stop that process (then resume), or cancel the execution"
    )
