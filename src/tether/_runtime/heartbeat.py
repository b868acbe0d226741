"""The heartbeat: a thread that renews the leases of the executions this process holds.

Each beat renews, in one statement per store, the leases that are due and the progress of
calls live for a beat at least; passes on cancel requests made from other processes; and
stops renewing the holds of an event loop that is stuck or ended, so that others take them
over.
"""

from __future__ import annotations

import logging
import threading
import time

from .._core import serde as _serde
from .._core.config import settings
from .._core.positions import sort_key
from .holds import Holds, _describe, _Held
from .owners import lease_term

# The executor's parts log as the executor: one logger to configure, one name in the logs.
log = logging.getLogger("tether.executor")

_HEARTBEAT_SECONDS = 1.0
_MAINTAIN_BEATS = 10


class Heartbeat(Holds):
    """The executor's heartbeat (a mixin of `Executor`)."""

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.is_alive():
            return
        with self._lock:
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._heartbeat = threading.Thread(
                    target=self._beat, name="tether-heartbeat", daemon=True
                )
                self._heartbeat.start()

    def _beat(self) -> None:
        beats = 0
        while not self._stopping.wait(_HEARTBEAT_SECONDS):
            beats += 1
            # The holds themselves, not (id, hold) pairs: with 10,000 executions held, a beat
            # that made a tuple per hold would feed the garbage collector 10,000 objects a
            # second that live through the whole beat.
            with self._lock:
                by_store: dict[int, list[_Held]] = {}
                for held in self._held.values():
                    found = by_store.get(id(held.store))
                    if found is None:
                        by_store[id(held.store)] = [held]
                    else:
                        found.append(held)
                stores = {key: entries[0].store for key, entries in by_store.items()}
                stores.update({id(s): s for s in self._parked.values()})
            for entries in by_store.values():
                entries = self._on_live_loops(entries)
                if entries:
                    self._renew(entries)
                    self._pass_on_cancels(entries)
            self._wake_strays()
            if beats % _MAINTAIN_BEATS == 0:
                for store in stores.values():
                    try:
                        store.maintain()
                    except Exception:
                        # Escaping would end the heartbeat, and with it every lease held here.
                        log.exception("store maintenance failed; trying again later")

    def _on_live_loops(self, entries: list[_Held]) -> list[_Held]:
        """The holds whose leases may be renewed: sync ones, and async ones whose event loop
        lives and turns. A loop that has not turned for a whole lease is stuck (a blocking
        call that never returns, a deadlock): renewing its leases would keep every
        execution on it from everyone, forever (if it turns again before they are taken over,
        renewing goes on; if not, their late commits are fenced off). One whose thread ended
        runs nothing more: its holds are dropped (a worker's slots free, a stop does not wait
        for them)."""
        lease = settings().lease_seconds
        # Each loop looked at once: thousands of holds share one or two loops.
        healthy: dict[int, bool] = {}
        for held in entries:
            loop = held.loop
            if loop is not None and id(loop) not in healthy:
                healthy[id(loop)] = loop.healthy(lease)
                if healthy[id(loop)]:
                    self._stalled.discard(id(loop))
        if all(healthy.values()):
            return entries  # the usual beat: every hold is renewed, nothing is copied
        kept: list[_Held] = []
        for held in entries:
            loop = held.loop
            if loop is None or healthy[id(loop)]:
                kept.append(held)
                continue
            execution_id = held.execution_id
            if loop.ended is not None or not loop.thread.is_alive():
                if held.run is not None:
                    held.run.lease_lost = True
                log.error(
                    "execution %s: abandoned here, its lease no longer renewed, because the "
                    "event loop it ran on ended (%s); another process takes it over",
                    execution_id, loop.ended,
                )  # fmt: skip
                self._ended(held, execution_id, None, None)
            elif id(loop) not in self._stalled:
                self._stalled.add(id(loop))
                log.error(
                    "the tether event loop has not turned for over %ss (lease_seconds): the "
                    "leases of its executions are no longer renewed, and other processes "
                    "may take them over; something blocks the loop thread",
                    lease,
                )  # fmt: skip
        return kept

    def _renew(self, entries: list[_Held]) -> None:
        """One statement for what changed since the last beat: the leases that are due, and
        the progress of executions whose live calls (those running for a beat at least)
        changed. A beat with neither writes nothing."""
        store = entries[0].store
        now = time.time()
        lease = settings().lease_seconds
        # Due once less than a lease (and two beats, for a late beat) is left: a lease is
        # never less than `lease_seconds` ahead while its holder lives.
        due_before = now + lease + 2 * _HEARTBEAT_SECONDS
        shown_before = now - _HEARTBEAT_SECONDS
        tokens: dict[str, str] = {}
        progress: dict[str, str | None] = {}
        sent: list[_Held] = []
        for held in entries:
            shows = _progress(held, shown_before)
            changed = shows != held.shown
            if changed:
                progress[held.execution_id] = shows
            if changed or held.expires < due_before:
                tokens[held.execution_id] = held.token
                sent.append(held)
        if not tokens:
            return
        expires = now + lease_term()
        try:
            still = dict(
                store.renew(list(tokens), tokens, expires, progress, refresh_before=due_before)
            )
        except Exception as exc:
            # A busy or briefly unavailable database: try again on the next beat; the lease
            # is long enough to ride out a few missed beats. If it lapses, fenced commits
            # keep a taker elsewhere and this process from both writing.
            self._complain(
                f"heartbeat:{id(store)}",
                "cannot renew the leases of %d execution(s) (%s...): %s; trying again",
                len(tokens),
                ", ".join(list(tokens)[:3]),
                _describe(exc),
            )
            return
        for held in sent:
            execution_id = held.execution_id
            cancel = still.get(execution_id)
            if cancel is not None:
                if held.expires < due_before:
                    held.expires = expires
                if execution_id in progress:
                    held.shown = progress[execution_id]
            run = held.run
            if run is None:
                continue
            if cancel is None:
                run.lease_lost = True
            elif cancel:
                run.cancel()

    def _pass_on_cancels(self, entries: list[_Held]) -> None:
        """Tell the runs of the executions held here that another process asked to cancel:
        one read of the (small) set of pending cancels per store per beat."""
        store = entries[0].store
        try:
            requested = store.cancel_requests()
        except Exception as exc:
            self._complain(
                f"cancels:{id(store)}", "cannot read cancel requests: %s", _describe(exc)
            )
            return
        if not requested:
            return
        for execution_id, token in requested:
            with self._lock:
                found = self._held.get((id(store), execution_id))
            if found is not None and found.token == token and found.run is not None:
                found.run.cancel()


def _progress(held: _Held, before: float) -> str | None:
    """The checkpoint calls of an execution live since `before` (a beat ago at least), as
    JSON: a call that ends within a beat is never written. Each beat asks this of every
    hold, and nearly every call is younger than a beat: those cost a look, no copy or sort."""
    found: list[tuple[str, str, float]] | None = None
    run = held.run
    if run is None or not run.live_since:
        return None
    # A copy taken in one step (the loop thread adds and removes calls meanwhile); a call's
    # name is added before its start and removed after it, so a start copied here has a name
    # unless the call ended since (then it is not live any more).
    for position, started in tuple(run.live_since.items()):
        if started <= before:
            name = run.live.get(position)
            if name is None:
                continue
            if found is None:
                found = []
            found.append((position, name, started))
    if found is None:
        return None
    found.sort(key=lambda item: sort_key(item[0]))
    return _serde.dumps(
        [{"position": at, "name": name, "since": started} for at, name, started in found]
    )
