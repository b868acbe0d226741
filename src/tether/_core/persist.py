"""Riding out a database that is briefly unusable (a restart, a failover, a full disk, a
lock held too long): the store classifies the fault; transient ones (`StoreUnavailable`)
are retried here with backoff.

Executors retry their writes while the lease would still be theirs (`lease_seconds`);
past that, another executor may take the execution over anyway, so they give up: the
engine then releases the execution with the reason recorded, and it continues once the
store is back. The event loop thread never sleeps here: a blocking retry there would freeze
every async execution of the process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import StoreUnavailable
from .config import settings

T = TypeVar("T")


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def persist(operation: Callable[[], T]) -> T:
    """Run a store operation, retrying while the store is unavailable, for at most the
    lease duration; then re-raise StoreUnavailable. Called on an event loop's thread, it
    tries once: that thread must not sleep (see `persist_async`)."""
    deadline = time.monotonic() + settings().lease_seconds
    pause = 0.05
    while True:
        try:
            return operation()
        except StoreUnavailable:
            if time.monotonic() + pause > deadline or _on_event_loop():
                raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


async def persist_async(operation: Callable[[], Awaitable[T]]) -> T:
    """`persist` for an awaitable store operation: the pauses do not block the event loop."""
    deadline = time.monotonic() + settings().lease_seconds
    pause = 0.05
    while True:
        try:
            return await operation()
        except StoreUnavailable:
            if time.monotonic() + pause > deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
