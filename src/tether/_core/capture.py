"""Capturing what a checkpoint prints and logs, per checkpoint call.

`print()` output and `logging` records made while a checkpoint runs are kept with
that checkpoint call and committed with its result; they still reach the console
as before. Attribution uses the same contextvar as everything else (the running
`Frame`), so output from concurrent async checkpoints and `.submit()` threads
lands on the right call. Each call keeps at most `max_log_bytes`; past that the
rest is dropped and a note says how much.

Two hooks, installed once, the first time an execution runs in the process:
- `sys.stdout` / `sys.stderr` are wrapped by a tee that forwards every write and, when a
  checkpoint is running, keeps a copy. (Re-installed if something replaced the stream.)
- a handler on the root logger keeps each record that reaches it. A `StreamHandler`'s own
  write of that record to stderr is not kept twice.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, TextIO

from .context import Frame, current_frame

MAX_LOG_BYTES = 64 * 1024

# The code of StreamHandler.emit: a write coming from there is a log record already kept.
_STREAM_EMIT = logging.StreamHandler.emit.__code__


class CapturedLog:
    """The output of one checkpoint call, bounded in size."""

    __slots__ = ("dropped", "entries", "size")

    def __init__(self) -> None:
        self.entries: list[tuple[float, str, str, str | None]] = []  # at, level, text, logger
        self.size = 0
        self.dropped = 0

    def add(self, level: str, text: str, logger: str | None = None) -> None:
        if not text:
            return
        room = MAX_LOG_BYTES - self.size
        if room <= 0:
            self.dropped += len(text)
            return
        if len(text) > room:
            self.dropped += len(text) - room
            text = text[:room]
        self.size += len(text)
        entries = self.entries
        # Consecutive writes to one stream (print writes the text, then "\n") form one entry.
        if logger is None and entries and entries[-1][1] == level and entries[-1][3] is None:
            at, _, previous, _ = entries[-1]
            entries[-1] = (at, level, previous + text, None)
        else:
            entries.append((time.time(), level, text, logger))


def log_of(frame: Frame) -> CapturedLog:
    log: CapturedLog | None = frame.log
    if log is None:
        log = frame.log = CapturedLog()
    return log


class _Tee:
    """Forwards to the real stream; keeps a copy of what a running checkpoint writes."""

    def __init__(self, stream: TextIO, level: str) -> None:
        self._stream = stream
        self._level = level

    def write(self, text: str) -> int:
        frame = current_frame.get()
        if frame is not None and sys._getframe(1).f_code is not _STREAM_EMIT:
            log_of(frame).add(self._level, text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if not _others_handle(record):
            # Without us Python would have printed this through its last-resort handler;
            # being a handler ourselves turns that off, so do it here.
            last = logging.lastResort
            if last is not None and record.levelno >= last.level:
                last.handle(record)
        frame = current_frame.get()
        if frame is None:
            return
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        if record.exc_info and record.exc_info[0] is not None:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        log_of(frame).add(record.levelname.lower(), message + "\n", record.name)


def _others_handle(record: logging.LogRecord) -> bool:
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        if any(h is not _handler for h in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


_lock = threading.Lock()
_handler = _Handler()


def install() -> None:
    """Make sure the hooks are in place (cheap when they are)."""
    if (
        isinstance(sys.stdout, _Tee)
        and isinstance(sys.stderr, _Tee)
        and _handler in logging.getLogger().handlers
    ):
        return
    with _lock:
        if not isinstance(sys.stdout, _Tee) and sys.stdout is not None:
            sys.stdout = _Tee(sys.stdout, "stdout")  # type: ignore[assignment,unused-ignore]
        if not isinstance(sys.stderr, _Tee) and sys.stderr is not None:
            sys.stderr = _Tee(sys.stderr, "stderr")  # type: ignore[assignment,unused-ignore]
        root = logging.getLogger()
        if _handler not in root.handlers:
            root.addHandler(_handler)
