"""Riding out a database that is briefly unavailable (a restart, a failover, a blip).

Executors retry their writes while the lease would still be theirs; past that, another
executor may take the execution over anyway, so they give up and leave it to recovery.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import StoreUnavailable
from .config import settings

T = TypeVar("T")


def persist(operation: Callable[[], T]) -> T:
    """Run a store operation, retrying while the store is unavailable, for at most the
    lease duration; then re-raise StoreUnavailable."""
    deadline = time.monotonic() + settings().lease_seconds
    pause = 0.05
    while True:
        try:
            return operation()
        except StoreUnavailable:
            if time.monotonic() + pause > deadline:
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
