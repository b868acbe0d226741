"""Execution and checkpoint status values."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where an execution is in its life. Values are the strings stored in the database."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True once the execution can no longer change (succeeded, failed or cancelled)."""
        return self in _FINISHED


_FINISHED = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


class CheckpointStatus(StrEnum):
    """The state of one recorded checkpoint call."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # Attempts have failed and more are allowed: not a recorded result, the call runs on resume.
    RETRYING = "retrying"
