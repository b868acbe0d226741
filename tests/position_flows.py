"""A flow whose recorded calls sit at every kind of position: numbered branches, keyed
branches (keys holding `.`, `]`, `[`, `/`, `\\`, `%`), keys nested in keys, waits and sleeps
in the flow body and in branches. At module level so that replay can import it again."""

from __future__ import annotations

import asyncio

import tether

# Keys a crawler really uses (URLs), and the characters the position syntax must escape.
KEYS = ["https://a.example/x", "a]b", "/", "[", "[b]", "x.y", "back\\slash", "100%", "%2E"]


@tether.checkpoint
async def fetch(key: str) -> str:
    await asyncio.sleep(0)
    print(f"fetched {key}")
    return f"page {key}"


@tether.checkpoint
async def summarise(text: str) -> str:
    await asyncio.sleep(0)
    return text.upper()


async def _pair(label: str) -> str:
    # An unnamed branch (a gathered task) with two calls: positions `N.i.0`, `N.i.1`.
    return await summarise(await fetch(label))


async def _crawl_one(i: int, key: str) -> str:
    with tether.branch(key):
        page = await fetch(key)
        with tether.branch("inner.part"):  # a key nested in a key
            await summarise(page)
        tether.sleep(0)  # an unnamed sleep inside a keyed branch
        approved = tether.wait(f"ok-{i}", timeout=0, default=True)
        return page if approved else ""


@tether.flow
async def crawl(topic: str) -> int:
    await fetch(topic)
    tether.sleep(0)
    pages = await asyncio.gather(*(_crawl_one(i, k) for i, k in enumerate(KEYS)))
    await asyncio.gather(_pair("left"), _pair("right"))
    tether.sleep(0, name="nap")
    tether.wait("approve", timeout=0, default=True)
    tether.sleep(0)
    return len(pages)
