"""Answers for live checkpoint calls: how a replay test (tether.testing) runs a flow against
a scratch store with its calls answered from another execution's recording.

An `Answers` object is installed per store (the scratch store of one replay case, so every
execution in it, child flows included, is answered, and nothing else in the process is).
A checkpoint call with no recorded result of its own asks it first: it returns a body to
run instead of the checkpoint's function (the recorded result, or the recorded error
raised again), or None to run the function live. The call is then committed as usual, so
the scratch store holds what the replay did, call by call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..store import Store


class Answers(Protocol):
    """What one replay case answers its checkpoint calls with."""

    # A model object that agent adapters (tether.ai) run with instead of their own; None:
    # model requests are answered like any call.
    model: object | None

    def answer(
        self, name: str, position: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[], Any] | None:
        """A body that returns (or raises) the recorded outcome, or None to run live. May
        raise to fail the call (a tool call that the recording cannot answer)."""


# Keyed by the store object: one scratch store per case. Empty in every process that runs
# no replay test, so a live call pays one truthiness test for it.
installed: dict[int, Answers] = {}


def install(store: Store, answers: Answers) -> None:
    installed[id(store)] = answers


def remove(store: Store) -> None:
    installed.pop(id(store), None)


def of(store: Store) -> Answers | None:
    return installed.get(id(store)) if installed else None
