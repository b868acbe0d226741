"""Which flows this process may run, and loading them: what the user named, never a row.

A process runs the flows it loaded itself: the flows its own code defined (every
`@tether.flow` registers itself here when its module is imported), the modules the user
named (`--import`, `TETHER_IMPORTS`, `[tool.tether] imports` in pyproject.toml; see
`load_module`, `load_configured`) and scripts the user named (`--script`, `load_script`).
An execution records where its flow lives (`module:qualname`, plus the script file when
the module is `__main__`), but the store may be written by people and programs this
process does not trust: a recorded path is only a key into the flows loaded here
(`lookup`). Nothing a row names is imported or run; a flow that is not loaded is a
FlowNotFoundError that names the flag which would load it.

A script run as `python agent.py` defines its flows in `__main__`. Another process (a
resumer, a worker) has its own `__main__`, so `--script` loads the file under an alias
module name, with its `if __name__ == "__main__":` block not run, and its flows are known
by the same `__main__:name` keys.

Loading runs the script's (or module's) top level. Code there that starts an execution
(`flow.run(...)` not under the `__main__` guard) would start a second, unrelated one every
time tether loads the file: while a load runs, `refuse_start` (called by everything that
records a new execution, before it writes) raises UnguardedScriptError, and the load fails
with it even if the script caught it.
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
from typing import Any

from ..errors import ConfigurationError, FlowNotFoundError, UnguardedScriptError, UsageError
from .config import configured_imports

MAIN_ALIAS = "__tether_main__"

_lock = threading.RLock()
# (import path, real path of the script for `__main__` flows, else None) -> the flow.
_flows: dict[tuple[str, str | None], Any] = {}
# Modules named by TETHER_IMPORTS or [tool.tether] that are loaded already.
_configured: set[str] = set()


class _Load:
    """A script or module tether is loading, and the first flow its top level tried to start."""

    __slots__ = ("source", "started")

    def __init__(self, source: str) -> None:
        self.source = source
        self.started: str | None = None


# Set while tether runs a script's or module's top level. A context variable, not a global:
# other threads of this process start executions meanwhile.
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
        "top level whenever it loads the file (`--import`, `--script`, TETHER_IMPORTS: to "
        "resume, recover or replay its flows, or in a worker); nothing was started. Put the "
        "code that starts executions under the guard, so that it runs only when you run the "
        "file:\n\n"
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


def _key(import_path: str, script: str | None) -> tuple[str, str | None]:
    # A script's flows are told apart by their file; a module's by its name alone (a script
    # path stored beside a module's flow means nothing).
    if import_path.partition(":")[0] == "__main__" and script:
        return import_path, os.path.realpath(script)
    return import_path, None


def register_flow(flow: Any, fn: Any) -> None:
    """Called by `@tether.flow` as it decorates `fn`: the flow is loaded in this process."""
    import_path, script = path_of(fn)
    if "<locals>" in import_path:
        return  # refused when started: no other process could find it
    with _lock:
        _flows[_key(import_path, script)] = flow


def lookup(import_path: str, script: str | None = None) -> Any:
    """The flow loaded in this process that an execution's recorded path names. Imports and
    runs nothing: FlowNotFoundError, naming the flag that would load it, when there is none."""
    found = _flows.get(_key(import_path, script))
    if found is None:
        raise not_loaded(import_path, script)
    return found


def not_loaded(import_path: str, script: str | None) -> FlowNotFoundError:
    """The error for a recorded flow that is not loaded here, with the flag that loads it."""
    module, _, qualname = import_path.partition(":")
    if "<locals>" in qualname:
        return FlowNotFoundError(
            f"flow `{import_path}` is defined inside a function, so no other process can load "
            "it; define it at module level"
        )
    if module != "__main__":
        if module in sys.modules:
            return FlowNotFoundError(
                f"flow `{import_path}` is not loaded: the module {module} is, but has no flow "
                f"{qualname!r}; was it renamed or removed since the execution started?"
            )
        return FlowNotFoundError(
            f"flow `{import_path}` is not loaded; add `--import {module}` (or import it in "
            "this process, or name it in TETHER_IMPORTS or [tool.tether] imports in "
            "pyproject.toml)",
            load_with=f"--import {module}",
        )
    if not script:
        return FlowNotFoundError(
            f"flow `{qualname}` was started from an interactive session (no script file), so "
            "only that process can run it"
        )
    if _loaded_script(script):
        return FlowNotFoundError(
            f"flow `{qualname}` is not loaded: the script {script} is, but has no flow "
            f"{qualname!r}; was it renamed or removed since the execution started?"
        )
    return FlowNotFoundError(
        f"flow `{qualname}` of the script {script} is not loaded; add `--script {script}`",
        load_with=f"--script {script}",
    )


def _loaded_script(script: str) -> bool:
    for name in ("__main__", MAIN_ALIAS):
        file = getattr(sys.modules.get(name), "__file__", None)
        if file and os.path.realpath(file) == os.path.realpath(script):
            return True
    return False


def load_module(module_name: str, origin: str = "--import") -> None:
    """Import a module the user named (`origin` says where: `--import`, TETHER_IMPORTS...),
    so that its flows are loaded; refused if its top level starts an execution."""
    try:
        with loading(f"the module {module_name}", module_name):
            importlib.import_module(module_name)
    except UnguardedScriptError:
        raise
    except ImportError as exc:
        raise UsageError(
            f"{origin} {module_name}: {exc}. Run from a directory (or with a PYTHONPATH) "
            "where the module is importable"
        ) from exc


def load_object(spec: str, origin: str) -> Any:
    """The object `MODULE:NAME` names (NAME may be dotted), its module imported as
    `load_module` imports one: for what the user names on a command line (`origin`: the
    flag), never for a path read from the store."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise UsageError(f"{origin} {spec!r}: give MODULE:NAME, e.g. myapp.evals:polite")
    load_module(module_name, origin)
    found: Any = sys.modules[module_name]
    for part in name.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise UsageError(f"{origin} {spec}: the module {module_name} has no {name}") from None
    return found


def load_script(script: str) -> None:
    """Load a script the user named (`--script`) under an alias module, its `__main__` block
    not run, so that its flows are loaded. One script per process (besides its own)."""
    path = os.path.realpath(script)
    if not os.path.isfile(path):
        raise UsageError(f"--script {script}: no such file")
    with _lock:
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_file and os.path.realpath(main_file) == path:
            return  # this process runs that very script: its flows are loaded
        loaded = sys.modules.get(MAIN_ALIAS)
        if loaded is not None:
            file = getattr(loaded, "__file__", None)
            if file and os.path.realpath(file) == path:
                return
            raise UsageError(
                f"--script {script}: this process already loaded the script {file}; a process "
                "loads one script (run one process per script, or make them modules and use "
                "--import)"
            )
        spec = importlib.util.spec_from_file_location(MAIN_ALIAS, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"--script {script}: cannot load it as Python")
        module = importlib.util.module_from_spec(spec)
        # The script's own imports must resolve as they did when it ran.
        script_dir = os.path.dirname(path)
        if script_dir not in sys.path:
            sys.path.insert(0, script_dir)
        sys.modules[MAIN_ALIAS] = module
        try:
            with loading(f"the script {path}", MAIN_ALIAS):
                spec.loader.exec_module(module)
        except UnguardedScriptError:
            raise
        except BaseException as exc:
            sys.modules.pop(MAIN_ALIAS, None)
            raise UsageError(f"--script {script}: loading it failed: {exc!r}") from exc


def load_configured() -> None:
    """Import the modules the user's configuration names (`TETHER_IMPORTS`, else
    `[tool.tether] imports` of the nearest pyproject.toml), once per process. Called by what
    resumes executions (Client, replay, worker), never by what only reads them."""
    modules, origin, folder = configured_imports()
    todo = [m for m in modules if m not in _configured]
    if not todo:
        return
    if folder is not None and folder not in sys.path:
        sys.path.insert(0, folder)
    for module in todo:
        try:
            load_module(module, origin)
        except UsageError as exc:
            if isinstance(exc, UnguardedScriptError):
                raise
            raise ConfigurationError(str(exc)) from exc
        with _lock:
            _configured.add(module)
