"""`GET /api/v1/executions/{id}/events`: an execution's events as Server-Sent Events.

The store is polled here (one process's worth of readers, no notification channel that
both databases share). Each event row is sent with its id, so a client that reconnects
with `Last-Event-ID` gets exactly what it missed. A `status` message is sent first and
whenever the status changes; it carries the id of the last event sent, so it never moves
a client's resume point past an event. A stream ends when the execution has ended (after
its last events) or after `max_seconds`; clients reconnect, as EventSource does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from .._ops import views
from .._ops.client import Client


def message(event: str, data: Any, event_id: int | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {json.dumps(data, default=str)}")
    return "\n".join(lines) + "\n\n"


async def events(
    client: Client, execution_id: str, after: int, *, poll: float, max_seconds: float
) -> AsyncIterator[str]:
    deadline = time.monotonic() + max_seconds
    last, status = after, None
    yield f"retry: {int(poll * 1000) or 1}\n\n"
    while True:
        record = await asyncio.to_thread(client.summary, execution_id)
        # Events first, then the status read before them: an event written just before the
        # end is never left behind by a final status.
        rows = await asyncio.to_thread(client.events, execution_id, after=last)
        for row in rows:
            last = row.id
            yield message("event", views.event_json(row), row.id)
        current = record.status.value
        if current != status:
            status = current
            shown = {
                "id": record.id,
                "status": current,
                "updated_at": views.iso(record.updated_at),
            }
            yield message("status", shown, last)
        if record.status.finished:
            # Events written after the status was read: one more look, then end.
            for row in await asyncio.to_thread(client.events, execution_id, after=last):
                last = row.id
                yield message("event", views.event_json(row), row.id)
            yield message("end", {"id": record.id, "status": current}, last)
            return
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(poll)


async def changes(client: Client, *, poll: float, max_seconds: float) -> AsyncIterator[str]:
    """A `changed` message whenever the counts of executions by status and queue or of
    pending waits change (the dashboard's list and inbox refresh on it). One grouped count
    per poll, for every reader: cheap next to a page load."""
    deadline = time.monotonic() + max_seconds
    seen: Any = None
    yield f"retry: {int(poll * 1000) or 1}\n\n"
    while time.monotonic() < deadline:
        stats = await asyncio.to_thread(client.stats)
        now = (sorted(stats.counts.items()), stats.pending_waits)
        if now != seen:
            if seen is not None:
                yield message("changed", {"pending_waits": stats.pending_waits})
            seen = now
        await asyncio.sleep(poll)
