"""Rows and states for the store conformance suites (test_conformance*.py), built through the
abstract `tether.store.Store` interface only."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tether.store import Claim, ExecutionRow, Store

T0 = 1_700_000_000.0
LEASE = 30.0
NOW = T0 + 1  # the lease clock of most tests: every lease taken by `start` is live at NOW


def execution(
    execution_id: str = "e1", *, flow: str = "flow", status: str = "queued", created_at: float = T0
) -> ExecutionRow:
    return ExecutionRow(
        id=execution_id,
        flow=flow,
        import_path=f"agents:{flow}",
        script=None,
        args='{"args":[],"kwargs":{}}',
        status=status,
        created_at=created_at,
        updated_at=created_at,
    )


def lease(token: str, owner: str = "host:1:a", expires: float = T0 + LEASE) -> Claim:
    return Claim(owner=owner, token=token, expires=expires)


def start(
    store: Store,
    execution_id: str = "e1",
    token: str = "tok-1",
    *,
    flow: str = "flow",
    created_at: float = T0,
    now: float = NOW,
    expires: float = T0 + LEASE,
) -> str:
    """Create an execution and claim it to `running`; returns the lease token."""
    store.create_execution(execution(execution_id, flow=flow, created_at=created_at))
    taken = store.claim(
        execution_id,
        lease(token, expires=expires),
        from_statuses=["queued"],
        expected_token=None,
        now=now,
    )
    assert taken
    return token


def get(store: Store, execution_id: str = "e1") -> ExecutionRow:
    row = store.get_execution(execution_id)
    assert row is not None
    return row


def race(contenders: int, contend: Callable[[int], None]) -> None:
    """Run `contend(i)` on `contenders` threads released together; re-raise any failure."""
    barrier = threading.Barrier(contenders)
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            contend(i)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
