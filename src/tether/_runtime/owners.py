"""Owner ids and owner liveness: who holds a lease, and whether that process still lives.

Owner ids name the host and pid, so a process on the same host can tell at once that an
owner was killed, instead of waiting for its lease to run out.
"""

from __future__ import annotations

import os
import socket
import uuid

from .._core.config import settings

# The PID namespace of a machine's own processes (Linux's PROC_PID_INIT_INO).
_INIT_PID_NAMESPACE = "4026531836"


def _locality(host: str) -> str:
    """Where a pid means one process: the host, and its PID namespace when that is not the
    machine's own. Two containers may share a hostname (`hostNetwork: true` pods, a fixed
    `hostname:`) while each has its own pids: one must never read the other's live pid as a
    dead process of its own and take its executions over before their leases run out."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:  # not Linux, or no /proc: the host is all there is to go by
        return host
    namespace = link[link.find("[") + 1 : link.rfind("]")]
    return host if namespace in ("", _INIT_PID_NAMESPACE) else f"{host}~{namespace}"


_HOST_NAME = socket.gethostname()  # what people read ("pid 12 on web-1")
_HOST = _locality(_HOST_NAME)  # what owner ids carry, and what "this host" means


def lease_term() -> float:
    """How far ahead a claim or a renewal sets a lease: 4/3 of `lease_seconds`, renewed once
    less than `lease_seconds` (and two beats) is left, so it is always at least that far
    ahead while its holder lives, and each lease is written once per third of a term, not
    every beat."""
    return settings().lease_seconds * 4 / 3


def host_prefix() -> str:
    """The start of every owner id of this host."""
    return f"{_HOST}:"


def new_owner_id() -> str:
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed child that its parent has not reaped yet is a zombie: dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True
