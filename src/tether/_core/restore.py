"""Which class a stored name may stand for, without importing anything.

A stored value, a stored error and a stored wait schema name classes by import path
(`module:qualname`). The store may be written by people and programs this process does not
trust, so a name is only ever looked up, never imported: it resolves to a class the process
already has (its module is in `sys.modules`) or one registered with `tether.register()`.
What it resolves to must be a class of the kind the tag says (a dataclass, a Pydantic model,
an Enum...), never a function, so decoding can call nothing but a class's own constructor
or validators.
"""

from __future__ import annotations

import dataclasses
import enum
import pathlib
import sys
import threading
from typing import Any

from pydantic import BaseModel

from ..errors import UsageError
from .imports import MAIN_ALIAS, path_of

_lock = threading.Lock()
_registered: dict[str, type] = {}


def register(cls: type) -> type:
    """Let stored values of `cls` be restored as `cls` in this process even before its module
    is imported by the application, e.g. in a process that only reads executions.

    `cls` is a dataclass, a Pydantic model, an Enum, a NamedTuple or an exception class,
    defined at module level. Returns `cls`, so it works as a class decorator:

    ```python
    @tether.register
    class Verdict(BaseModel):
        approved: bool
    ```

    A stored value whose class is neither registered nor in a module the process has already
    imported is returned as a `tether.StoredValue` (its type's name and its data): reading
    never imports what a stored row names.
    """
    if not isinstance(cls, type) or kind_of(cls) is None:
        raise UsageError(
            f"tether.register() takes a dataclass, a Pydantic model, an Enum, a NamedTuple or "
            f"an exception class, not {cls!r}"
        )
    import_path, _ = path_of(cls)
    if "<locals>" in import_path:
        raise UsageError(
            f"{cls.__qualname__} is defined inside a function; define it at module level to "
            "register it"
        )
    with _lock:
        _registered[import_path] = cls
        if import_path.startswith("__main__:"):
            # A script's class, registered by the process that loaded the script under an alias
            # or as __main__: both spellings name it.
            _registered[MAIN_ALIAS + import_path[len("__main__") :]] = cls
    return cls


def kind_of(cls: type) -> str | None:
    """The stored-value tag a class is restored under, or "error"; None: not restorable."""
    if issubclass(cls, BaseModel):
        return "model"
    if issubclass(cls, enum.Enum):
        return "enum"
    if dataclasses.is_dataclass(cls):
        return "dataclass"
    if issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple):
        return "namedtuple"
    if issubclass(cls, pathlib.PurePath):
        return "path"
    if issubclass(cls, BaseException):
        return "error"
    return None


def find(import_path: str) -> type | None:
    """The class a stored `module:qualname` names, if this process has it; never imports."""
    found = _registered.get(import_path)
    if found is not None:
        return found
    module_name, sep, qualname = import_path.partition(":")
    if not sep or not qualname:
        return None
    obj = _module(module_name, qualname)
    for part in qualname.split("."):
        # The namespace itself, not getattr: a module's __getattr__ (a lazy import) or a
        # class's descriptors would run code named by stored data.
        namespace = getattr(obj, "__dict__", None)
        if namespace is None:
            return None
        obj = namespace.get(part)
    return obj if isinstance(obj, type) else None


def find_kind(import_path: str, kind: str) -> type | None:
    """`find`, but only a class restorable under `kind` (a stored tag's kind)."""
    cls = find(import_path)
    if cls is None or kind_of(cls) != kind:
        return None
    return cls


def _module(module_name: str, qualname: str) -> Any:
    if module_name == "__main__":
        # A process that resumes a script's flows loaded the script under an alias; its
        # classes were recorded under __main__ by the process that ran it.
        alias = sys.modules.get(MAIN_ALIAS)
        head = qualname.split(".")[0]
        if alias is not None and head in vars(alias):
            return alias
    return sys.modules.get(module_name)
