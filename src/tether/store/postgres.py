"""The production store: PostgreSQL through psycopg 3 and a connection pool.

Every query lives in `_sql.SqlStore`; this module supplies connections from a
pool (autocommit, so a single statement is its own transaction), transactions,
the `%s` placeholder style, row locks (`FOR UPDATE`, and `FOR UPDATE SKIP
LOCKED` so that claimers never wait on each other), and an advisory lock that
serializes schema migrations when several workers start at once.

Install the driver with `pip install 'tether[postgres]'`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, StoreError, StoreUnavailable
from ._sql import Connection, SqlStore, to_format_style

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

# pg_advisory_xact_lock key for migrations: any constant unique to tether.
_MIGRATION_LOCK = 0x7E7E_7E01


class PostgresStore(SqlStore):
    dialect = "postgres"
    lock_row = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, *, max_connections: int = 32, connect_timeout: float = 10) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise ConfigurationError(
                f"{url!r} needs the PostgreSQL driver: pip install 'tether[postgres]' ({exc})"
            ) from exc
        self.url = url
        self._listen: Any = None
        self._listen_lock = threading.Lock()
        # Connection-level failures (server restart, network) mean "try again later";
        # anything else (a constraint, a bug) is a real error and propagates as it is.
        self._unavailable: tuple[type[BaseException], ...] = (psycopg.OperationalError,)
        self._pool: ConnectionPool[Any] = ConnectionPool(
            conninfo=url,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True},
            timeout=connect_timeout,
            open=False,
            name="tether",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except Exception as exc:
            self._pool.close()
            raise StoreError(
                f"cannot connect to PostgreSQL at {_redact(url)}: {exc}. Is the server running, "
                "and does the URL name an existing database and user?"
            ) from exc
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except self._unavailable as exc:
            raise self._down(exc) from exc

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield conn
        except self._unavailable as exc:
            raise self._down(exc) from exc

    def _down(self, exc: BaseException) -> StoreUnavailable:
        # The pool replaces broken connections by itself; callers retry the operation.
        return StoreUnavailable(f"PostgreSQL at {_redact(self.url)} is unavailable: {exc}")

    def _executemany(self, conn: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with conn.cursor() as cursor:  # type: ignore[attr-defined]
                cursor.executemany(self._sql(sql), rows)

    def _sql(self, text: str) -> str:
        return to_format_style(text)

    def _lock_queue(self, conn: Connection, name: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tether-queue:{name}",))

    def _lock_for_migration(self, conn: Connection) -> None:
        conn.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")

    # --- notifications ------------------------------------------------------------------

    notifies = True

    def wait_for_work(self, timeout: float) -> None:
        """Block on LISTEN until the trigger reports a runnable execution, or `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            listener = self._listener()
            for _ in listener.notifies(timeout=max(0.0, timeout), stop_after=1):
                break
        except self._unavailable:
            # The server went away: drop the connection (a new one is made next time) and
            # fall back to waiting out the timeout, as a polling worker would.
            self._close_listener()
            time.sleep(max(0.0, deadline - time.monotonic()))

    def _listener(self) -> Any:
        with self._listen_lock:
            if self._listen is None or self._listen.closed:
                import psycopg

                conn = psycopg.connect(self.url, autocommit=True)
                conn.execute("LISTEN tether_runnable")
                self._listen = conn
            return self._listen

    def _close_listener(self) -> None:
        with self._listen_lock:
            if self._listen is not None:
                with suppress(Exception):
                    self._listen.close()
                self._listen = None

    @property
    def closed(self) -> bool:
        return bool(self._pool.closed)

    def close(self) -> None:
        self._close_listener()
        self._pool.close()


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
