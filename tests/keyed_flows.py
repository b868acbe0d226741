"""Workers taking URLs from a shared queue, each URL's calls inside `tether.branch(...)`: the
README's queue pattern, with input in which a URL can appear twice. At module level so that
another process can resume the executions.

`fetch(url)` returns a token unique to the attempt, so a call handed another call's recorded
result shows it, and its arguments are the same for both copies of a URL (no "different
arguments" warning could give a swap away). Each attempt appends `<position> <url> <item>
<result>` to $SIDE_EFFECTS (`item` is the input index the calling worker is on). The first
copy's calls really await longer than the second's, so live the two interleave; on resume
recorded calls return at once and they interleave differently. $KILL_AT names a position
whose attempt SIGKILLs the process inside its body, after logging.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import time
import uuid

import tether

# The input index the current worker task is on: read by `fetch` for its log line and its
# delay, never passed as an argument.
ITEM: contextvars.ContextVar[int] = contextvars.ContextVar("keyed_item", default=-1)


def _log_or_die(position: str, line: str) -> None:
    path = os.environ.get("SIDE_EFFECTS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    if os.environ.get("KILL_AT") == position:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)


@tether.checkpoint
async def fetch(url: str) -> str:
    result = f"{url}~{uuid.uuid4().hex[:8]}"
    position = tether.current().position
    _log_or_die(position, f"{position} {url} {ITEM.get()} {result}")
    await asyncio.sleep(0.05 if ITEM.get() == 0 else 0.0)  # a real await
    return result


@tether.flow
async def crawl(urls: list[str], by_index: bool) -> dict[str, list[str]]:
    queue: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()
    for item in enumerate(urls):
        queue.put_nowait(item)
    workers = 2
    for _ in range(workers):
        queue.put_nowait(None)
    out: dict[str, list[str]] = {}

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            index, url = item
            ITEM.set(index)
            # The duplicate-safe key (by_index) names the line of work by its place in the
            # input as well; the URL alone is the same key for both copies of a URL.
            with tether.branch(f"{index}:{url}" if by_index else url):
                first = await fetch(url)
                out[str(index)] = [first, await fetch(url)]

    await asyncio.gather(*(worker() for _ in range(workers)))
    tether.wait("go", schema=bool)
    return out
