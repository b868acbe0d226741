"""Branch-scoped positions: the identity of a recorded call within its execution.

A recorded call (checkpoint, wait, memory operation, child flow) is identified by
its *position*: the path of the branch it runs in and its sequence number within
that branch, written `3` (the flow body's fourth call) or `3.1.2` (the third call
of the second branch created by the branch created at the flow body's fourth
slot). The flow body is the root branch. Every asyncio task created by flow code
(`gather`, `TaskGroup`, `create_task`, a gathered `to_thread`) is a child branch
whose number is taken from its creator's sequence *when the task is created*, in
program order; never when it first runs or when it finishes. So however the
event loop schedules branches, a resumed flow gives every call the identity it
had, and no call can receive another call's recorded result.

Where the order in which branches are created itself depends on data (workers
pulling from a shared queue, `as_completed`), `tether.branch(key)` names the
branch instead: its calls are `[key].0`, `[key].1`, ... below the enclosing
named branch (or the flow body), whatever task or order they run in. The key is stored
escaped (no `.`, `[` or `]` in it); `display` writes it back as given (only `]` and `\\`
backslash-escaped) and `parse` reads that form, so what people see is what they select with.

Positions are stored as text. `sort_key` orders them in program order (a branch's
calls after the slot that created it, in sequence), which is how the CLI lists
them and how replay and retry decide what lies before a position.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

from ..errors import BranchKeyInUse, UsageError
from ..store._positions import before, display, escape_key, is_position, parse, sort_key

__all__ = [
    "Branch",
    "CallSlot",
    "before",
    "branch",
    "current_call",
    "frozen_context",
    "own_slot",
    "owned_slot",
    "running_task",
    "set_call",
    "current_root",
    "display",
    "install",
    "is_position",
    "Pin",
    "one_recorded_call",
    "parse",
    "pin",
    "sort_key",
]


_Holder = asyncio.Task[Any] | threading.Thread

# Every branch numbers its slots from this range (see `Branch.take`): more than any flow takes.
_SLOTS = range(sys.maxsize)


class CallSlot:
    """A task's own cell for its current checkpoint call (see `_calls`). Every branch is one
    too, though only the run (the flow body's branch) serves as one: the slot of the task
    that runs the flow body (`own_slot`), one object less per live execution."""

    __slots__ = ("call", "owner")

    def __init__(self, owner: int | None) -> None:
        self.call: Any = None
        # `id()` of the task: a reference to the task would be a cycle through its context,
        # and the task would outlive its end until a collection found it. None: no task's.
        self.owner = owner


class Branch(CallSlot):
    """One line of recorded calls: a position prefix and its own sequence counter."""

    __slots__ = ("_base", "_holder", "_holds", "_named", "_sequence", "prefix")

    def __init__(self, prefix: str, base: Branch | None = None) -> None:
        self.call: Any = None
        self.owner: int | None = None
        self.prefix = prefix  # "" for the flow body, "3.1." for a branch
        # The nearest named branch (or the root) that `tether.branch(key)` nests under: an
        # unnamed branch's own number depends on creation order, so keys skip over it. None
        # for a branch that is its own base: a reference to itself would be a cycle, which
        # only a collection frees, once per execution.
        self._base = base
        # The branch's slot numbers: an iterator over a range, whose `next()` is atomic under
        # the GIL (safe across threads sharing one branch: a to_thread awaited in place) and
        # which, unlike an itertools.count, the collector does not track (one object less
        # for every full collection to walk, per live execution).
        self._sequence = iter(_SLOTS)
        self._named: dict[str, Branch] | None = None
        # The task (or thread) inside `tether.branch(key)` for a named branch, and how many
        # times it entered it: a second live holder would share the sequence (see `enter`).
        self._holder: _Holder | None = None
        self._holds = 0

    def take(self) -> str:
        """The next position in this branch."""
        return f"{self.prefix}{next(self._sequence)}"

    def child(self) -> Branch:
        """A new branch created here, numbered by this branch's next slot."""
        return Branch(f"{self.take()}.", self._base or self)

    def named(self, key: str) -> Branch:
        """The branch `tether.branch(key)` opens here; the same object for the same key, so
        a key entered again continues its sequence."""
        base = self._base or self
        if base._named is None:
            base._named = {}
        found = base._named.get(key)
        if found is None:
            found = base._named.setdefault(key, _new_named(base, key))
        return found

    def enter(self, holder: _Holder, key: str) -> None:
        """Enter this named branch as `holder`; BranchKeyInUse while another live holder is
        inside. Two tasks in one key would take its slots in whatever order they run, so on
        resume (recorded calls return at once, the order changes) they could swap results.
        Numbering them automatically would depend on that same order, so it is refused.
        Entering after the other left continues the sequence, as documented."""
        with _holding:
            current = self._holder
            if current is not None and current is not holder and _alive(current):
                raise BranchKeyInUse(
                    f"tether.branch({key!r}) is already held by another task of this flow "
                    "that is still inside it: two tasks in one key share its sequence, and on "
                    "resume could get each other's recorded results. Give each line of work "
                    "a key of its own: if items can repeat, key by their place in the input "
                    f'as well (tether.branch(f"{{index}}:{{item}}")) or remove duplicates '
                    "before handing them out.",
                    key,
                )
            if current is not holder:
                self._holder, self._holds = holder, 0
            self._holds += 1

    def leave(self, holder: _Holder) -> None:
        with _holding:
            if self._holder is holder:
                self._holds -= 1
                if self._holds <= 0:
                    self._holder, self._holds = None, 0


# Holding is checked and taken under one lock: threads (gathered `to_thread`s) enter keys too.
_holding = threading.Lock()


def _alive(holder: _Holder) -> bool:
    # A holder that ended without leaving (a generator suspended inside the block and never
    # closed) holds nothing any more.
    if isinstance(holder, threading.Thread):
        return holder.is_alive()
    return not holder.done()


def _me() -> _Holder:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop in this thread
        task = None
    return task if task is not None else threading.current_thread()


def _new_named(base: Branch, key: str) -> Branch:
    # A position splits on "." and a key sits between brackets: the stored key holds neither.
    return Branch(f"{base.prefix}[{escape_key(key)}].")


# The branch running code records its calls in: set to a child by the task factory for each
# task flow code creates, to a named branch inside `tether.branch(key)`. None outside a flow
# and in the flow body itself, whose branch is the run (`current_root`).
current_branch: contextvars.ContextVar[Branch | None] = contextvars.ContextVar(
    "tether_branch", default=None
)

# The checkpoint call whose body runs now (`context.current_frame`, a `Frame`; kept here so
# that this module can read it). While there is one, code records nothing in its branch:
# tasks a body creates are part of that one call and take no slot, since on resume the body
# does not run, so neither would they.
#
# The variable holds the call itself, or None, or a task's `CallSlot` whose `call` says.
# Setting a context variable builds a new mapping for the context (two GC-tracked objects),
# and the one set for a call lives as long as the call: across a model call's await, long
# enough to be promoted out of the young generations, on every call of every execution.
# So a task that makes calls one after another gets a slot, set once, and each call writes
# the slot instead (`own_slot`). Only its task writes it; code
# that shares the task's context (a thread it awaits, a copy) reads it as it is now, while
# tasks created through the loop's task factory are given the value of the moment they
# were created (`_Factory`), as a copied context would have given them.
_calls: contextvars.ContextVar[Any] = contextvars.ContextVar("tether_frame", default=None)


def current_call() -> Any:
    """The checkpoint call whose body runs now, or None."""
    value = _calls.get()
    if isinstance(value, CallSlot):
        return value.call
    return value


def set_call(call: Any) -> None:
    """Make `call` current in this context (or none, with None) by setting the variable:
    for a context that is not a task's (a thread's) and for a task that makes one call."""
    _calls.set(call)


def own_slot(task: asyncio.Task[Any] | None, root: CallSlot) -> CallSlot | None:
    """The slot of `task` (the running task) to write its calls in: its own, or made and set
    now, once for every call it makes; `root` (the run) for the task that runs the flow body,
    whose `owner` the engine set. None where the caller sets the variable instead: with no
    task (a thread), or for a task made to run a single call, which would use a slot once
    (and, like any slot, keep it for its life)."""
    if task is None:
        return None
    value = _calls.get()
    if isinstance(value, CallSlot) and value.owner == id(task):
        return value
    if root.owner == id(task):
        slot = root
    elif getattr(task.get_coro(), "cr_code", None) in _one_call:
        return None
    else:
        slot = CallSlot(id(task))
    _calls.set(slot)
    return slot


def owned_slot(task: asyncio.Task[Any] | None) -> CallSlot | None:
    """The slot of `task` if it has one already; None otherwise (nothing is made)."""
    value = _calls.get()
    if task is not None and isinstance(value, CallSlot) and value.owner == id(task):
        return value
    return None


def running_task() -> asyncio.Task[Any] | None:
    """The task running this code, or None in a thread without a running loop."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def frozen_context() -> contextvars.Context:
    """A copy of the current context that sees the current call as it is now (not a slot
    that the task's later calls write): for work handed to a thread that may outlive the
    call."""
    copied = contextvars.copy_context()
    value = copied.get(_calls)
    if isinstance(value, CallSlot):
        copied.run(_calls.set, value.call)
    return copied


@contextlib.contextmanager
def branch(key: str | int) -> Iterator[None]:
    """Give the code inside (and the tasks it creates) a recorded identity named by `key`.

    Inside a flow, each asyncio task the flow creates is a branch numbered in the order the
    tasks were created, so concurrent calls never get each other's recorded results. Where
    that order depends on data (workers taking items from a shared queue, handling results
    as they complete), name the branch after the item instead:

    ```python
    async def worker(queue: asyncio.Queue[Item]) -> None:
        while (item := await queue.get()) is not None:
            with tether.branch(item.id):
                await summarise(item)  # recorded as [<item.id>].0, whichever worker runs it
    ```

    The identity depends only on the key and the enclosing `tether.branch` blocks, never on
    which task runs the code or when; a key entered again continues where it left off, so
    use one key per line of work. A task entering a key that another live task is inside
    (same enclosing branch) raises BranchKeyInUse: if items can repeat, key them by their
    place in the input too (`f"{index}:{item}"`). Outside a flow, or inside a checkpoint,
    this does nothing.
    """
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise UsageError(f"a branch key is a string or an integer, not {key!r}")
    text = str(key)
    if not text:
        raise UsageError("a branch key is a non-empty string")
    here = current_branch.get() or current_root.get()
    if here is None or current_call() is not None:
        yield  # outside a flow, or inside a checkpoint: nothing is recorded here
        return
    named = here.named(text)
    me = _me()
    named.enter(me, text)
    token = current_branch.set(named)
    try:
        yield
    finally:
        current_branch.reset(token)
        named.leave(me)


class Root(Branch):
    """The flow body's branch, which is the execution's run (`context.Run`, the only
    subclass): besides numbering the body's calls, it notes the tasks the body creates."""

    __slots__ = ()

    def add(self, task: asyncio.Future[Any], /) -> None:
        """Note a task created while the flow body runs."""
        raise NotImplementedError

    def discard(self, task: asyncio.Future[Any], /) -> None:
        """Forget a task that ended."""
        raise NotImplementedError


# The running execution's root branch: its run (`context.current_run` is this variable, typed
# as the run; it is defined here, below that module). Where no branch is current
# (`current_branch` None: the task that runs the flow body, a thread it hands work to) code
# records its calls in it: the engine sets no branch for the body, two mappings fewer built
# per execution and one key fewer in its context. On a shared event loop the task factory
# notes in it the tasks created while the body runs (by flow code and checkpoint bodies
# alike): whatever is left of them when the body ends is cancelled, as `asyncio.run` did when
# every execution had a loop of its own.
current_root: contextvars.ContextVar[Root | None] = contextvars.ContextVar(
    "tether_run", default=None
)


# --- the task factory: branches for tasks, numbered when they are created ------------------


class Pin:
    """While active, tasks created in a context that holds it share their creator's branch
    (see `pin`)."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = True

    def release(self) -> None:
        self.active = False


_pinned: contextvars.ContextVar[Pin | None] = contextvars.ContextVar("tether_pinned", default=None)

# Code objects of coroutines that are one recorded call whose position was taken when it was
# called (an async checkpoint call): a task made to run one needs no branch of its own, so
# `gather(step(0), step(1))` numbers the flow body 0, 1 and its next call 2.
_one_call: set[Any] = set()


def one_recorded_call(code: Any) -> None:
    """Register the code object of a coroutine function whose coroutines are a single
    recorded call numbered when called (see `_one_call`)."""
    _one_call.add(code)


def pin() -> Pin:
    """From here in the current context, until the returned pin is released, tasks created
    share the current branch instead of taking a slot each.

    For library code whose own task creation is its business (Pydantic AI's graph makes tasks
    for capabilities, lifecycle hooks, streams and tool runs; how many can change with its
    version or with timing), while its recorded calls are put in order by other means (the
    agent adapter takes tool calls' positions in the order the model made them): numbering
    those tasks would make recorded positions depend on the library's internals. A pin is
    released rather than reset because the hook that ends it may run in another task.
    """
    found = Pin()
    _pinned.set(found)
    return found


class _Factory:
    """A loop's task factory that gives each task created by flow code its own branch,
    delegating the task's creation to the factory that was there before (or asyncio.Task)."""

    __slots__ = ("previous",)

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(
        self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Future[Any]:
        root = current_root.get()
        parent = current_branch.get() or root
        one_call = getattr(coro, "cr_code", None) in _one_call
        given = kwargs.get("context")
        inherited = given.get(_calls) if given is not None else _calls.get()
        # A task would read its creator's slot as the creator's later calls write it: it is
        # given the call of now instead, as a copy of the context used to give it. (A task
        # that runs a single call sets its own first and reads nothing before: no copy.)
        freeze = isinstance(inherited, CallSlot) and not one_call
        if parent is not None and current_call() is None and not _is_pinned() and not one_call:
            # Runs in the creator's context, so this is the creator's branch and the slot is
            # taken in the creator's program order. The task runs in a copy of the context
            # (what asyncio does anyway) in which its own branch is current.
            context = given.copy() if given is not None else contextvars.copy_context()
            context.run(_enter_branch, parent.child(), inherited.call if freeze else _KEEP)
            kwargs["context"] = context
        elif freeze:
            context = given.copy() if given is not None else contextvars.copy_context()
            context.run(_calls.set, inherited.call)
            kwargs["context"] = context
        if self.previous is not None:
            task: asyncio.Future[Any] = self.previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        if root is not None:
            root.add(task)
            # Run in an empty context, not a copy of the creator's (asyncio's default): the
            # note reads no variable, and a copy is one object more per live branch.
            task.add_done_callback(root.discard, context=_QUIET)
        return task


_KEEP = object()  # the task keeps what its context holds
# The context of the done callback that forgets a branch's task: one, shared, with nothing set.
_QUIET = contextvars.Context()


def _enter_branch(branch: Branch, call: Any) -> None:
    current_branch.set(branch)
    if call is not _KEEP:
        # In the same context as the branch: of the two mappings built, one stays.
        _calls.set(call)


def _is_pinned() -> bool:
    found = _pinned.get()
    return found is not None and found.active


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Make tasks created on `loop` by flow code branches. Idempotent; keeps (and calls) a
    task factory the loop already has."""
    factory = loop.get_task_factory()
    if isinstance(factory, _Factory):
        return
    loop.set_task_factory(_Factory(factory))  # type: ignore[arg-type]
