"""Finding objects again from a recorded import path, in any process.

An execution records where its flow lives (`module:qualname`, plus the script
file when the module is `__main__`), and stored dataclasses and Pydantic models
record their class the same way. Another process resolves those paths here.

A script run as `python agent.py` defines its flows in `__main__`. A different
process (a resumer, a worker) has its own `__main__`, so the script is loaded
again under an alias module name, with its `if __name__ == "__main__":` block
not run, and `__main__` paths resolve into that alias.

Loading runs the script's (or module's) top level again. Code there that starts an
execution (`flow.run(...)` not under the `__main__` guard) would start a second,
unrelated one every time tether loads the file: while a load runs, `refuse_start`
(called by everything that records a new execution, before it writes) raises
UnguardedScriptError, and the load fails with it even if the script caught it.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from ..errors import FlowNotFoundError, UnguardedScriptError

MAIN_ALIAS = "__tether_main__"

_lock = threading.Lock()
_cache: dict[tuple[str, str | None], Any] = {}


class _Load:
    """A script or module tether is loading, and the first flow its top level tried to start."""

    __slots__ = ("source", "started")

    def __init__(self, source: str) -> None:
        self.source = source
        self.started: str | None = None


# Set while tether runs a script's or module's top level to find something in it. A context
# variable, not a global: other threads of this process start executions meanwhile.
_loading: contextvars.ContextVar[_Load | None] = contextvars.ContextVar(
    "tether_loading", default=None
)


def refuse_start(flow_name: str) -> None:
    """Raise UnguardedScriptError when code that tether is loading starts an execution (of
    the flow `flow_name`); nothing when no load is under way. Call before writing anything."""
    load = _loading.get()
    if load is None:
        return
    if load.started is None:
        load.started = flow_name
    raise _unguarded(load)


@contextlib.contextmanager
def loading(source: str, module_name: str | None = None) -> Iterator[None]:
    """Run a script's or module's top level (inside the block) with starting executions
    refused. If the top level tried, the load fails with UnguardedScriptError, whatever the
    script did with the error; `module_name` is then taken out of `sys.modules`, so that the
    next load runs the top level again rather than finding a half-loaded module."""
    load = _Load(source)
    token = _loading.set(load)
    try:
        yield
    except BaseException as exc:
        if load.started is None:
            raise
        _forget(module_name)
        raise _unguarded(load) from exc
    finally:
        _loading.reset(token)
    if load.started is not None:
        _forget(module_name)
        raise _unguarded(load)


def _forget(module_name: str | None) -> None:
    if module_name is not None:
        sys.modules.pop(module_name, None)


def _unguarded(load: _Load) -> UnguardedScriptError:
    name = load.started or "a flow"
    return UnguardedScriptError(
        f"{load.source} starts an execution ({name}) at its top level, and tether runs that "
        "top level again whenever it loads the file to find a flow (to resume, recover or "
        "replay one, or in a worker); nothing was started. Put the code that starts "
        "executions under the guard, so that it runs only when you run the file:\n\n"
        '    if __name__ == "__main__":\n'
        f"        {name}.run(...)\n",
        load.source,
    )


def path_of(obj: Any) -> tuple[str, str | None]:
    """The import path of a module-level function or class, and its script file if in `__main__`."""
    module = getattr(obj, "__module__", None) or "__main__"
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "?")
    script: str | None = None
    if module in ("__main__", MAIN_ALIAS):
        main = sys.modules.get(module)
        file = getattr(main, "__file__", None)
        script = os.path.abspath(file) if file else None
        module = "__main__"
    return f"{module}:{qualname}", script


def resolve(import_path: str, script: str | None = None) -> Any:
    """Import the object at `module:qualname`; raises FlowNotFoundError saying why it failed."""
    key = (import_path, script)
    cached = _cache.get(key)
    if cached is not None:
        return cached
    module_name, _, qualname = import_path.partition(":")
    if "<locals>" in qualname:
        raise FlowNotFoundError(
            f"{import_path} is defined inside a function, so no other process can import it; "
            "define it at module level"
        )
    module = _module(module_name, script, import_path)
    obj: Any = module
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FlowNotFoundError(
                f"cannot find {qualname!r} in module {module.__name__!r} (recorded as "
                f"{import_path}); was it renamed or removed since the execution started?"
            ) from None
    _cache[key] = obj
    return obj


def _module(module_name: str, script: str | None, import_path: str) -> ModuleType:
    if module_name != "__main__":
        try:
            with loading(f"the module {module_name}", module_name):
                return importlib.import_module(module_name)
        except ImportError as exc:
            raise FlowNotFoundError(
                f"cannot import module {module_name!r} for {import_path}: {exc}. Run from a "
                "directory (or PYTHONPATH) where the module is importable"
            ) from exc
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if script is None:
        # A stored value's class recorded as `__main__:Name`: in a process that loaded the
        # script under the alias (to resume one of its flows), that is where it lives.
        alias = sys.modules.get(MAIN_ALIAS)
        if alias is not None and hasattr(alias, import_path.partition(":")[2].split(".")[0]):
            return alias
    if main is not None and (script is None or _same_file(main_file, script)):
        return main
    if script is None:
        raise FlowNotFoundError(
            f"{import_path} was defined in a script whose path was not recorded"
        )
    with _lock:
        loaded = sys.modules.get(MAIN_ALIAS)
        if loaded is not None and _same_file(getattr(loaded, "__file__", None), script):
            return loaded
        if not os.path.exists(script):
            raise FlowNotFoundError(
                f"{import_path} was defined in the script {script}, which no longer exists"
            )
        spec = importlib.util.spec_from_file_location(MAIN_ALIAS, script)
        if spec is None or spec.loader is None:
            raise FlowNotFoundError(f"cannot load the script {script} for {import_path}")
        module = importlib.util.module_from_spec(spec)
        # The script's own imports must resolve as they did when it ran.
        script_dir = os.path.dirname(script)
        if script_dir not in sys.path:
            sys.path.insert(0, script_dir)
        sys.modules[MAIN_ALIAS] = module
        try:
            with loading(f"the script {script}", MAIN_ALIAS):
                spec.loader.exec_module(module)
        except UnguardedScriptError:
            raise
        except BaseException as exc:
            sys.modules.pop(MAIN_ALIAS, None)
            raise FlowNotFoundError(f"loading the script {script} failed: {exc!r}") from exc
        return module


def _same_file(a: str | None, b: str) -> bool:
    return a is not None and os.path.abspath(a) == os.path.abspath(b)
