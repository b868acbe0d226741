"""Fixtures for the store conformance suite: one `store` per available implementation.

Adding an implementation is one entry in `STORE_URLS` (a name and how to build a fresh,
empty store URL for one test); every conformance test then runs against it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tether.store import Store, open_store

STORE_URLS: dict[str, Callable[[Path], str]] = {
    "sqlite": lambda tmp_path: f"sqlite:///{tmp_path}/s.db",
}


@pytest.fixture(params=sorted(STORE_URLS))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty store of each available kind."""
    return STORE_URLS[request.param](tmp_path)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()
