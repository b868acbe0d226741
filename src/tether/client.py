"""Client: inspect and operate executions. The CLI and servers are thin layers over it."""

from __future__ import annotations

import builtins
import datetime as dt
import time
from collections.abc import Iterable
from typing import Any

from ._config import store_for
from ._engine import load_flow
from ._executor import executor
from ._flow import Handle
from ._records import ExecutionRecord
from ._status import Status
from .errors import ExecutionLocked, ExecutionNotFound, InvalidStateError, UsageError
from .store import ExecutionRow, Store

_RESUMABLE = (Status.QUEUED.value, Status.RUNNING.value)


class Client:
    """Inspect and operate executions in a store.

    ```python
    client = tether.Client()              # the configured store (TETHER_DB or default)
    record = client.get(execution_id)
    for cp in record.checkpoints:
        print(cp.position, cp.name, cp.status, cp.duration)
    client.recover()                      # resume everything whose process died
    ```
    """

    def __init__(self, db: str | None = None) -> None:
        self._store: Store = store_for(db)

    @property
    def db(self) -> str:
        return self._store.url

    def get(self, execution_id: str) -> ExecutionRecord:
        """One execution with its checkpoint calls and events."""
        row = self._row(execution_id)
        return ExecutionRecord.from_row(
            row,
            self._store.get_checkpoints(execution_id),
            self._store.get_events(execution_id),
        )

    def list(
        self,
        status: Status | str | Iterable[Status | str] | None = None,
        flow: str | None = None,
        limit: int = 100,
    ) -> builtins.list[ExecutionRecord]:
        """Executions, newest first, filtered by status (one or several) and flow name."""
        if limit < 1:
            raise UsageError(f"limit must be at least 1, not {limit}")
        statuses: list[str] | None = None
        if status is not None:
            items = [status] if isinstance(status, str) else list(status)
            statuses = [_status(s) for s in items]
        rows = self._store.list_executions(statuses=statuses, flow=flow, limit=limit)
        return [ExecutionRecord.from_row(r) for r in rows]

    def handle(self, execution_id: str) -> Handle[Any]:
        """A Handle on an existing execution (to wait for its result)."""
        self._row(execution_id)
        return Handle(execution_id, self._store)

    def resume(self, execution_id: str) -> Handle[Any]:
        """Continue an unfinished execution in this process, re-entering its flow from the top.

        Refused with ExecutionLocked while another live process holds it. Raises
        FlowNotFoundError, changing nothing, when its flow cannot be imported here.
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
        flow = load_flow(row.import_path, row.script)
        token = self._take(row, now)
        if token is None:
            raise ExecutionLocked(
                f"execution {execution_id} was taken by another process just now; "
                "check Client.get(id).owner"
            )
        runner.start(self._store, execution_id, token, flow)
        return Handle(execution_id, self._store)

    def cancel(self, execution_id: str) -> Status:
        """Cancel an execution. One that runs stops at its next checkpoint boundary; one that
        nobody runs is cancelled at once. Returns the status after the request."""
        self._row(execution_id)
        executor().cancel_local(self._store, execution_id)
        status = self._store.request_cancel(execution_id, now=time.time())
        if status is None:
            raise ExecutionNotFound(f"no execution {execution_id} in {self._store.url}")
        return Status(status)

    def recover(self) -> builtins.list[str]:
        """Resume in this process every unfinished execution whose owner is gone (killed,
        or its lease expired). Returns the ids resumed."""
        runner = executor()
        now = time.time()
        resumed: list[str] = []
        for row in self._store.orphans(statuses=_RESUMABLE):
            if runner.holds(self._store, row.id):
                continue
            if not runner.owner_gone(row.owner, row.lease_expires, now):
                continue
            try:
                flow = load_flow(row.import_path, row.script)
            except UsageError as exc:
                self._store_warning(row.id, f"recover skipped it: {exc}")
                continue
            token = self._take(row, now)
            if token is not None:
                runner.start(self._store, row.id, token, flow)
                resumed.append(row.id)
        return resumed

    # --- internals ----------------------------------------------------------------------

    def _row(self, execution_id: str) -> ExecutionRow:
        if not isinstance(execution_id, str) or not execution_id:
            raise UsageError(f"an execution id is a non-empty string, not {execution_id!r}")
        row = self._store.get_execution(execution_id)
        if row is None:
            raise ExecutionNotFound(f"no execution {execution_id} in {self._store.url}")
        return row

    def _take(self, row: ExecutionRow, now: float) -> str | None:
        """Compare-and-swap the lease to this process; the new token, or None if we lost."""
        claim = executor().claim()
        taken = self._store.claim(
            row.id,
            claim,
            from_statuses=_RESUMABLE,
            expected_token=row.lease_token,
            now=now,
            status=Status.QUEUED,
        )
        return claim.token if taken else None

    def _store_warning(self, execution_id: str, message: str) -> None:
        from .store import EventRow

        self._store.add_event(
            EventRow(execution_id, None, time.time(), "warning", "recover", message)
        )


def _status(value: Status | str) -> str:
    try:
        return Status(value).value
    except ValueError:
        choices = ", ".join(s.value for s in Status)
        raise UsageError(f"unknown status {value!r}; choose from {choices}") from None


def _locked_message(row: ExecutionRow, now: float) -> str:
    expires = row.lease_expires or now
    until = dt.datetime.fromtimestamp(expires, dt.UTC).strftime("%H:%M:%S UTC")
    return (
        f"execution {row.id} is held by the live process {row.owner} (lease until {until}); "
        "it is still running there. Stop that process (then resume), or cancel the execution"
    )
