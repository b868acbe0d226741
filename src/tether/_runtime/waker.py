"""The waker: a thread that resumes the executions parked in this process once they are
runnable (their input, their timer, the end of a crash loop's pause), releases executions
given back for a fault, and, in an application's process (not a worker's), adopts the
stranded executions of the flows it loaded (adoption.py; `launch()`) and fires their
schedules.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time

from .._core.config import settings
from .._core.status import Status
from ..errors import StoreCorrupt, StoreUnavailable
from ..store import EventRow, ExecutionRow, Store
from .adoption import HANDBACK_EVENT, ScanState, flow_loaded, note_data, scan_key
from .holds import Holds, _describe
from .owners import _HOST_NAME, host_prefix
from .schedules import Firer

# The executor's parts log as the executor: one logger to configure, one name in the logs.
log = logging.getLogger("tether.executor")

# How often parked executions are checked for input from other processes and due timers.
_WAKER_SECONDS = 0.2
# Rows a waker round reads per scanned branch (see Store.scan_runnable): a round's work is
# bounded, and a scan that goes on where the last round stopped reaches every runnable row.
_SCAN_PAGE = 500
# Every this many waker rounds: stranded executions are looked for (adoption), and parked
# ones that ended elsewhere forgotten.
_ADOPT_ROUNDS = 5
_FORGET_ROUNDS = 25
# At exit, executions adopted here are asked to hand themselves back for this long.
_EXIT_GRACE_SECONDS = 2.0
# Executions that an internal error (not a store fault) threw out of their task this many
# times are left queued for `recover` or a worker instead of being resumed here again.
_MAX_ESCAPES = 3


class Waker(Holds):
    """The executor's waker (a mixin of `Executor`)."""

    def park(self, store: Store, execution_id: str) -> None:
        """Remember a queued execution that is not runnable yet (a delayed start): the waker
        claims it here once it is."""
        with self._lock:
            if (id(store), execution_id) not in self._held:
                self._parked[(id(store), execution_id)] = store
        try:
            # The note adoption reads: if this process is gone when the time comes, the
            # application's next process takes the execution over (a worker would anyway).
            store.add_event(
                EventRow(execution_id, None, time.time(), "info", HANDBACK_EVENT,
                         f"a delayed start: pid {os.getpid()} on {_HOST_NAME} starts it when due",
                         note_data(self.owner))
            )  # fmt: skip
        except Exception:
            log.debug("execution %s: could not note its delayed start", execution_id, exc_info=True)
        self.adopt_from(store)
        self._ensure_waker()

    def poke(self, execution_id: str | None = None) -> None:
        """Input was given (to `execution_id`) or a timer changed in this process: look at
        parked executions now."""
        if execution_id is not None:
            with self._lock:
                self._woken.add(execution_id)
        self._poke.set()

    def adopt_from(self, store: Store) -> None:
        """From now on, while this process lives, take over the stranded executions in
        `store` of the flows loaded here (see adoption.py), unless `adopt` is off or this
        executor belongs to a worker (which claims everything itself)."""
        current = settings()
        if not (current.adopt and current.executor and self.parking):
            return
        with self._lock:
            if id(store) in self._adopting:
                return
            self._adopting[id(store)] = store
            if not self._exit_hook:
                self._exit_hook = True
                atexit.register(self._at_exit, os.getpid())
        self._ensure_waker()
        self._poke.set()

    def _at_exit(self, pid: int) -> None:
        """Hand back what was adopted, then end the waker and the heartbeat: their SQLite
        connections close with their threads, so the store's own close at exit (registered
        before this, so run after it) closes the last one and removes the WAL."""
        if pid != os.getpid():
            return  # a forked child: it holds none of these (its parent does)
        self._hand_back_adopted()
        self._stopping.set()
        self._poke.set()
        for thread in (self._waker, self._heartbeat):
            if thread is not None and thread.is_alive():
                thread.join(timeout=1.0)

    def _hand_back_adopted(self) -> None:
        """Ask the executions adopted here to hand themselves back at their next boundary
        (briefly), noting that this process parked them, so the next process of the app
        adopts them again without counting this exit as a crash. What is still running
        after the grace is left to its lease (a takeover then counts, as for a crash)."""
        with self._lock:
            keys = [key for key in self._adopted if key in self._held]
            runs = [run for key in keys if (run := self._held[key].run) is not None]
        if not keys:
            return
        for run in runs:
            run.release()
        deadline = time.monotonic() + _EXIT_GRACE_SECONDS
        while time.monotonic() < deadline:
            with self._lock:
                if not any(key in self._held for key in keys):
                    break
            self.wait_for_free(0.05)
        with self._lock:
            stores = dict(self._adopting)
            released = [key for key in keys if key not in self._held]
        for store_key, execution_id in released:
            store = stores.get(store_key)
            if store is None or store.closed:
                continue
            with contextlib.suppress(Exception):  # advisory, as the suspend note
                store.add_event(
                    EventRow(execution_id, None, time.time(), "info", HANDBACK_EVENT,
                             f"handed back by {self.owner} at exit", note_data(self.owner))
                )  # fmt: skip

    def _ensure_waker(self) -> None:
        with self._lock:
            if self._waker is None or not self._waker.is_alive():
                self._waker = threading.Thread(target=self._wake, name="tether-waker", daemon=True)
                self._waker.start()

    def _wake(self) -> None:
        rounds = 0
        while not self._stopping.is_set():
            self._poke.wait(_WAKER_SECONDS)
            self._poke.clear()
            rounds += 1
            try:
                self._wake_round(rounds)
            except Exception:
                # A bug here must not end the waker: parked executions would never resume.
                log.exception("the waker failed; trying again")

    def _wake_round(self, rounds: int) -> None:
        if self._faulted:
            self._release_faulted()
        if self.parking and settings().adopt:
            self._fire_schedules()
        with self._lock:
            by_store: dict[int, tuple[Store, set[str]]] = {
                key: (store, set()) for key, store in self._adopting.items()
            }
            for (key, execution_id), store in self._parked.items():
                by_store.setdefault(key, (store, set()))[1].add(execution_id)
            woken, self._woken = self._woken, set()
        for key, (store, ids) in by_store.items():
            if store.closed:
                with self._lock:
                    for execution_id in ids:
                        self._parked.pop((key, execution_id), None)
                    self._adopting.pop(key, None)
                    self._scans.pop(key, None)
                    self._firers.pop(key, None)
                continue
            try:
                self._scan_store(store, ids, woken & ids, rounds)
            except Exception as exc:
                # A busy or unavailable database: the next round tries again.
                self._complain(
                    "waker",
                    "cannot look for runnable executions (%d parked here: %s...): %s; trying again",
                    len(ids),
                    ", ".join(sorted(ids)[:3]),
                    _describe(exc),
                )

    def _fire_schedules(self) -> None:
        """A process that adopts its stranded work (`tether.launch()`) also starts the due
        ticks of the scheduled flows it loaded, and runs them itself: a queued execution
        nobody parked is the workers' and would not be adopted here."""
        with self._lock:
            stores = [s for s in self._adopting.values() if not s.closed]
        for store in stores:
            firer = self._firers.setdefault(id(store), Firer())
            try:
                fired = firer.fire(store, settings().clock(), self.claim)
            except Exception as exc:
                self._complain(
                    "schedules", "cannot fire schedules: %s; trying again", _describe(exc)
                )
                continue
            for scheduled, row in fired:
                row.has_history = False
                self.start(
                    store, row.id, row.lease_token or "", scheduled.flow, claimed=True, row=row
                )

    def _release_faulted(self) -> None:
        """Release the executions handed back for a fault (fenced by their old token) and
        record why on each, as soon as the store takes writes; then park them, so that the
        waker resumes them here once they are runnable."""
        with self._lock:
            faults = list(self._faulted.items())
        clock = settings().clock
        for key, fault in faults:
            execution_id = key[1]
            store = fault.store
            if store.closed or isinstance(fault.error, StoreCorrupt):
                # A damaged store takes no writes at all: the error said so already.
                with self._lock:
                    self._faulted.pop(key, None)
                continue
            try:
                if not fault.released:
                    if not store.release(
                        execution_id, fault.token, status=Status.QUEUED, now=clock()
                    ):
                        # Someone else holds it, or it ended: nothing of ours to give back.
                        with self._lock:
                            self._faulted.pop(key, None)
                        continue
                    fault.released = True
                store.add_event(
                    EventRow(
                        execution_id=execution_id,
                        position=None,
                        at=time.time(),
                        level="warning",
                        kind="released",
                        message=f"released (queued) by {self.owner}: {_describe(fault.error)}",
                    )
                )
            except Exception as exc:
                self._complain(
                    f"fault:{execution_id}",
                    "execution %s: cannot release it yet (%s); trying again",
                    execution_id,
                    _describe(exc),
                )
                continue
            with self._lock:
                self._faulted.pop(key, None)
                self._complained.pop(f"fault:{execution_id}", None)
                if isinstance(fault.error, StoreUnavailable):
                    self._escapes.pop(key, None)
                else:
                    # An internal error: resumed here a few times, then left to others.
                    self._escapes[key] = count = self._escapes.get(key, 0) + 1
                    if count >= _MAX_ESCAPES:
                        self._abandoned[key] = fault.error
                        log.error(
                            "execution %s: left queued for `tether executions recover` or a "
                            "worker after %d internal errors here: %s",
                            execution_id,
                            count,
                            _describe(fault.error),
                        )
                        continue
                if self.parking and key not in self._held:
                    self._parked[key] = store
                self._changed.notify_all()

    def _scan_store(self, store: Store, parked: set[str], woken: set[str], rounds: int) -> None:
        """Claim and run what became runnable among the executions parked here and, when
        adopting, the stranded executions of flows loaded here. Each way of being runnable is
        read by a keyset scan that goes on, round after round, from where it stopped (a page
        at most per round), so a round costs O(page) whatever the store holds, and no row
        waits behind older ones for longer than the rounds it takes to pass them."""
        now, due = time.time(), settings().clock()
        # Input given in this process: claimed by id at once, before any scan.
        for execution_id in woken:
            self._take(store, execution_id, now, due)
        # Adoption looks every few rounds (an idle application pays a few reads a second);
        # executions parked here are looked for every round.
        adopting = (
            rounds % _ADOPT_ROUNDS == 1
            and self.parking
            and id(store) in self._adopting
            and settings().adopt
        )
        if not parked and not adopting:
            return
        scan = self._scans.setdefault(id(store), ScanState())
        branches = ("queued", "due", "expired") if adopting else ("queued", "due")
        lease = settings().lease_seconds
        for branch in branches:
            rows = store.scan_runnable(
                branch, after=scan.cursors.get(branch), now=now, due=due, limit=_SCAN_PAGE
            )
            # A short page ends the scan: the next round starts it again from the top.
            scan.cursors[branch] = scan_key(branch, rows[-1]) if len(rows) == _SCAN_PAGE else None
            for row in rows:
                if self.holds(store, row.id):
                    continue
                if row.id in parked or (
                    adopting
                    and scan.adoptable(
                        store, row, branch, gone=self._gone, lease=lease, now=now, due=due
                    )
                ):
                    self._take(store, row.id, now, due, adopted=row.id not in parked)
        if adopting:
            # Dead processes of this host still have live leases: their pids tell at once.
            for execution_id, token in self.take_over_dead(
                store, now, flow_loaded, limit=_SCAN_PAGE
            ):
                self._adopt(store, execution_id, token, None)
        if parked and rounds % _FORGET_ROUNDS == 0:
            # Parked executions that ended or were taken elsewhere (a cancel, a recover):
            # one statement per few hundred ids, every few seconds.
            states = store.execution_states(sorted(parked))
            with self._lock:
                for execution_id in parked:
                    state = states.get(execution_id)
                    if state is None or Status(state[0]).finished or state[1] is not None:
                        self._parked.pop((id(store), execution_id), None)

    def _take(
        self, store: Store, execution_id: str, now: float, due: float, *, adopted: bool = False
    ) -> None:
        claim = self.claim()
        taken = store.claim_runnable(claim, now=now, due=due, ids=[execution_id])
        if taken is None:
            return
        if adopted:
            self._adopt(store, execution_id, claim.token, taken)
        else:
            self.start(store, execution_id, claim.token, None, claimed=True, row=taken)

    def _adopt(self, store: Store, execution_id: str, token: str, row: ExecutionRow | None) -> None:
        log.info("execution %s: adopted (its process is gone)", execution_id)
        with self._lock:
            self._adopted.add((id(store), execution_id))
        self.start(store, execution_id, token, None, claimed=True, row=row)

    def _gone(self, owner: str) -> bool | None:
        """Whether the process of an owner id is dead (True), alive (False), or on another
        host, where its pid cannot be looked at (None)."""
        if owner == self.owner:
            return False
        if not owner.startswith(host_prefix()):
            return None
        return self.owner_gone(owner, float("inf"), time.time())
