"""The outlines of finished executions' calls, kept between reads of their windows.

A page of an execution with thousands of calls needs all of them in program order, counted,
with their usage totalled: one walk over every call, most of the page's time. A finished
execution's calls do not change: no lease holds it, so no fenced write lands, until
`Client.retry()` resets it, which changes its status and `updated_at`. So an outline read
for a finished execution is kept under (id, status, updated_at): the next page of the same
execution, or the same page again, reads only its window. A running execution is read
afresh each time. Small executions are not kept: reading them costs next to nothing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from .._spend.usage import Usage

# Executions with fewer calls are read afresh: their walk costs less than a millisecond.
MIN_CALLS = 200
# Positions kept in all (about 60 bytes each): the least recently read outlines go first.
MAX_POSITIONS = 200_000


@dataclass(frozen=True, slots=True)
class Outline:
    """An execution's calls in program order, how many succeeded, and their usage total."""

    positions: tuple[str, ...]
    succeeded: int
    usage: Usage


Key = tuple[str, str, float]


class Outlines:
    """A bounded, thread-safe cache of outlines (the server reads on a pool of threads)."""

    def __init__(self, *, min_calls: int = MIN_CALLS, max_positions: int = MAX_POSITIONS) -> None:
        self._min_calls = min_calls
        self._max_positions = max_positions
        self._lock = threading.Lock()
        self._kept: OrderedDict[Key, Outline] = OrderedDict()
        self._size = 0

    def get(self, key: Key) -> Outline | None:
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
            return found

    def put(self, key: Key, outline: Outline) -> None:
        size = len(outline.positions)
        if size < self._min_calls or size > self._max_positions:
            return
        with self._lock:
            old = self._kept.pop(key, None)
            if old is not None:
                self._size -= len(old.positions)
            self._kept[key] = outline
            self._size += size
            while self._size > self._max_positions:
                _, dropped = self._kept.popitem(last=False)
                self._size -= len(dropped.positions)

    def __len__(self) -> int:
        return len(self._kept)
