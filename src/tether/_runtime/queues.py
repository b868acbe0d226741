"""Queues: where executions wait for a worker, with priorities and limits.

Every execution belongs to a queue (`"default"` unless its flow or its start says
otherwise). Workers serve some queues (`tether worker --queue emails`) or all of them.
A queue's limits hold across the fleet: at most `concurrency` executions running at once
and at most `rate_limit` starts per `rate_period` seconds; `worker_concurrency` caps how
many of them one worker runs. Limits are declared in code with `tether.Queue(...)` and
published to the store by the workers that serve the queue.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..errors import UsageError

DEFAULT = "default"

_lock = threading.Lock()
_declared: dict[str, Queue] = {}


@dataclass(frozen=True)
class Queue:
    """A named queue and its limits.

    ```python
    emails = tether.Queue("emails", concurrency=10, rate_limit=100, rate_period=60)

    @tether.flow(queue=emails)
    def send_campaign(campaign_id: str) -> None: ...
    ```
    """

    name: str
    concurrency: int | None = None
    worker_concurrency: int | None = None
    rate_limit: int | None = None
    rate_period: float = 60.0

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise UsageError(f"a queue name is a non-empty string, not {self.name!r}")
        for field in ("concurrency", "worker_concurrency", "rate_limit"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(
                    f"Queue {field} must be a whole number of at least 1, not {value!r}"
                )
        if self.rate_period <= 0:
            raise UsageError(f"Queue rate_period must be positive seconds, not {self.rate_period}")
        with _lock:
            _declared[self.name] = self


def all_declared() -> list[Queue]:
    """Every queue declared in this process (by the modules imported so far)."""
    with _lock:
        return list(_declared.values())


def declared(name: str) -> Queue | None:
    """The queue declared under that name in this process, if any."""
    return _declared.get(name)


def name_of(queue: Queue | str | None) -> str:
    if queue is None:
        return DEFAULT
    if isinstance(queue, Queue):
        return queue.name
    if isinstance(queue, str) and queue:
        return queue
    raise UsageError(f"queue must be a tether.Queue or a queue name, not {queue!r}")
