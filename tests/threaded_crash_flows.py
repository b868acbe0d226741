"""A flow module that starts a thread when imported (as some telemetry exporters do), for
tests/test_crash_test.py: crash_test warns, since its forked cases lack that thread."""

from __future__ import annotations

import threading

import tether

_stop = threading.Event()
threading.Thread(target=_stop.wait, name="exporter", daemon=True).start()


@tether.checkpoint
def one(value: int) -> int:
    return value + 1


@tether.flow
def exported(value: int) -> int:
    return one(value)
