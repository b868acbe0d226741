"""Shared fixtures: a fresh SQLite store per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from tether import _config


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite file, configured as the process's store for the test."""
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    _config.reset()
    tether.configure(db=url)
    yield url
    _config.reset()


@pytest.fixture
def client(db_url: str) -> tether.Client:
    return tether.Client(db_url)
