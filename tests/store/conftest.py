"""Fixtures for the store conformance suite: one `store` per backend under test.

The backend follows `TETHER_TEST_DB` (see tests/conftest.py): SQLite by default, PostgreSQL
with `TETHER_TEST_DB=postgres`, each test on a fresh, empty database.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backend import BACKEND, fresh_database
from tether.store import Store, open_store


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty store of the backend under test."""
    if BACKEND == "postgres":
        return fresh_database(request)
    return f"sqlite:///{tmp_path}/s.db"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()
