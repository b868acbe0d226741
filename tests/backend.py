"""Which database the tests run on: `TETHER_TEST_DB=sqlite` (default) or `postgres`."""

from __future__ import annotations

import os
import uuid

import pytest

BACKEND = os.environ.get("TETHER_TEST_DB", "sqlite").strip().lower()
if BACKEND not in ("sqlite", "postgres"):
    raise pytest.UsageError(f"TETHER_TEST_DB must be sqlite or postgres, not {BACKEND!r}")

postgres_only = pytest.mark.skipif(BACKEND != "postgres", reason="needs TETHER_TEST_DB=postgres")


def fresh_database(request: pytest.FixtureRequest) -> str:
    """A new, empty PostgreSQL database in the session's throwaway cluster."""
    cluster = request.getfixturevalue("pg_cluster")
    return str(cluster.create_database(f"t_{uuid.uuid4().hex[:16]}"))
