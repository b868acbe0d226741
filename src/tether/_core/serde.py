"""Values <-> stored text, and the errors for what cannot be stored.

Stored values are JSON text, so that any database (and a person with `sqlite3`)
can read them. Plain JSON values (dicts with string keys, lists, strings,
numbers, booleans, None) are stored as they are: the hot path is one type walk
and one `json` encode. Everything else is stored as a tagged object
`{"$t": kind, ...}` so that it comes back as the same type, not as a lossy
look-alike: a tuple stays a tuple, `dict[int, X]` keeps its int keys, a
dataclass or Pydantic model is rebuilt as its class.

Stored text is data, whoever wrote it: decoding never imports a module and never calls
anything a stored value names. A class is restored only when this process already has it
(see restore.py), else the value comes back as a `StoredValue`. Objects with no JSON form
may be pickled (inside a tag) only when the user enables pickle and sets `TETHER_SECRET`:
the pickle is signed with an HMAC of that key, and unpickled only when the signature
matches. Errors are stored as data too (type, message, traceback, arguments, attributes).

A value that cannot be stored raises SerializationError naming the path to the
offending part, e.g. `result['items'][3].client`; a stored value that is not loaded names
its path the same way (PickleRefused for a pickle).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import hmac
import inspect
import json
import math
import pathlib
import pickle
import sys
import traceback as tb
import uuid
from typing import Any

import pydantic_core
from pydantic import BaseModel

from ..errors import CheckpointError, PickleRefused, SerializationError
from ..store._json_bytes import json_bytes
from . import config as _config
from . import imports as _imports
from . import restore as _restore

TAG = "$t"
_TAG_MARK = '"$t"'
_MAX_PLAIN_DEPTH = 64
# Containers nested deeper than this are refused when stored: decoding such a value again
# (JSON parsers, Python's recursion limit) would fail far from where it was written. Tagged
# containers take two JSON levels each, which stays inside the parsers' limits.
MAX_DEPTH = 100

# The hot path encodes and decodes with pydantic_core (Rust, already a dependency through
# Pydantic): measured ~10x faster than the json module for a 1 KB dict. Trees handed to it
# hold only JSON types (plain values, or the tagged trees built below), so its output is
# standard JSON. The encoder (`json_bytes`, with its json-module fallback for lone
# surrogates) lives with the store, which sends such trees to PostgreSQL itself; the json
# module is the decoder's fallback too.
_from_json = pydantic_core.from_json
_to_json = pydantic_core.to_json


def _encode_json(tree: Any) -> str:
    return json_bytes(tree).decode()


def _decode_json(text: str) -> Any:
    try:
        return _from_json(text)
    except ValueError:
        value = json.loads(text)
    # pydantic_core refuses text nested deeper than ~200 levels (a dict with int keys, stored
    # 100 deep, is 300), so the json module reads what it refused. On 3.11 the json module
    # counted its levels against the recursion limit and raised RecursionError past it; from
    # 3.12 its C decoder has a limit of its own, higher (3.12 reads 1,200 levels, 3.13
    # 10,000), and would hand back a row no recursive code can then walk. Python's recursion
    # limit stays the bound on every version: deeper is a row tether did not write.
    if _deeper_than(value, sys.getrecursionlimit()):
        raise RecursionError("stored JSON nested deeper than the recursion limit")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """`value` holds lists or dicts nested more than `limit` deep (walked with a stack of its
    own: a recursive walk would fail on the very rows it looks for)."""
    stack: list[tuple[Any, int]] = [(value, 1)] if type(value) in (dict, list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if type(node) is dict else node
        stack.extend((c, depth + 1) for c in children if type(c) is dict or type(c) is list)
    return False


def dumps(value: Any, *, allow_pickle: bool | None = None, root: str = "value") -> str:
    """Encode `value` as stored text. Raises SerializationError with the path on failure,
    or when the value is nested too deep or its text is over `max_value_bytes`.
    `allow_pickle`: the pickle fallback (default: the process setting)."""
    # The settings in force, read without a call when they are loaded (every commit gets here).
    settings = _config._settings or _config.settings()
    if _plain(value, 0):
        try:
            data = _to_json(value)
        except ValueError:  # what Rust strings cannot hold (lone surrogates): the fallback
            data = json_bytes(value)
    else:
        if allow_pickle is None:
            allow_pickle = settings.pickle
        data = json_bytes(_Encoder(allow_pickle).encode(value, root))
    if len(data) > settings.max_value_bytes:
        raise too_large(root, len(data), settings.max_value_bytes)
    return data.decode()


def too_large(root: str, size: int, limit: int) -> SerializationError:
    """The error of a value whose stored text would be `size` bytes, over `limit`."""
    return SerializationError(
        f"cannot store {root}: it is {_size(size)} as JSON, over the {_size(limit)} limit on a "
        "stored value. Keep large data elsewhere (a file, object storage) and store its "
        "reference, or raise the limit: tether.configure(max_value_bytes=...) or "
        "TETHER_MAX_VALUE_BYTES, in every process that writes the store",
        path=root,
    )


def _size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MiB"
    if size >= 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size} bytes"


def loads(text: str, root: str = "value") -> Any:
    """Decode stored text into data: the types that were stored where this process has
    them, StoredValue where it does not. Imports nothing, calls nothing a stored value names.
    Raises SerializationError (PickleRefused for a pickle) naming the path under `root`."""
    try:
        value = _decode_json(text)
    except RecursionError:
        raise _too_deep_to_read(root) from None
    if _TAG_MARK in text:
        try:
            return _decode(value)
        except _LoadFailure as failure:
            raise _failure(failure, root) from None
        except RecursionError:
            raise _too_deep_to_read(root) from None
    return value


def _too_deep_to_read(root: str) -> SerializationError:
    # Only a row tether did not write can be this deep (writes stop at MAX_DEPTH).
    return SerializationError(
        f"cannot load {root}: it is nested too deep to read (tether stores at most "
        f"{MAX_DEPTH} levels), so tether did not write it",
        path=root,
    )


def to_data(text: str | None) -> Any:
    """Stored text as plain JSON data for people and other languages (the HTTP API): no
    class is restored and nothing is unpickled, whatever this process has or is set to.
    A dataclass, model, enum, named tuple or path becomes `{"type_name", "kind", "data"}`
    (the shape of a `StoredValue`); tuples and sets become lists, a dict with keys that
    are not all strings a list of `[key, value]` pairs, bytes base64 text, dates, times,
    decimals and UUIDs their ISO or canonical text, a timedelta its seconds, a pickle
    `{"type_name": null, "kind": "pickle", "data": null}`. None stays None."""
    if text is None:
        return None
    value = _decode_json(text)
    # Bare NaN or Infinity (a row another writer left) are walked too: JSON has no such words.
    if _TAG_MARK in text or "NaN" in text or "Infinity" in text:
        return _as_data(value, 0)
    return value


# How data for other languages (`to_data`, the CLI's `--json`) spells a float that is not
# finite: strict JSON has no NaN or Infinity, so these strings stand for them.
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_SCALAR_KINDS = frozenset({"datetime", "date", "time", "decimal", "uuid"})


def _as_data(value: Any, depth: int) -> Any:
    if depth > 200:
        return None  # deeper than anything tether writes: not worth a RecursionError
    t = type(value)
    if t is list:
        return [_as_data(v, depth + 1) for v in value]
    if t is float and not math.isfinite(value):
        return NON_FINITE[repr(value)]
    if t is not dict:
        return value
    kind = value.get(TAG)
    if kind is None:
        return {k: _as_data(v, depth + 1) for k, v in value.items()}
    data = value.get("v")
    if kind in ("tuple", "set", "frozenset"):
        return [_as_data(v, depth + 1) for v in data] if type(data) is list else None
    if kind == "dict":
        if type(data) is not list:
            return None
        pairs = [_as_data(v, depth + 1) for v in data]
        if all(type(p) is list and len(p) == 2 and type(p[0]) is str for p in pairs):
            return dict(pairs)  # string keys (a "$t" key made it tagged): an object again
        return pairs
    if kind == "float":
        return NON_FINITE.get(data, data) if type(data) is str else None
    if kind in ("bytes", "bytearray") or kind in _SCALAR_KINDS:
        return data if type(data) is str else None
    if kind == "timedelta" and type(data) is list and len(data) == 3:
        return data[0] * 86400 + data[1] + data[2] / 1e6  # in seconds
    if kind in _CLASS_KINDS:
        shown = _as_data(data, depth + 1)
        if kind == "model" and type(value.get("x")) is dict and type(shown) is dict:
            shown = {**shown, **_as_data(value["x"], depth + 1)}
        name = value.get("c")
        return {"type_name": name if type(name) is str else None, "kind": kind, "data": shown}
    return {"type_name": None, "kind": kind if type(kind) is str else None, "data": None}


def fingerprint(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A short stable hash of call arguments: a resumed call with other arguments is noted."""
    # Scalars only: their repr is stable across processes and runs (the common case: ids,
    # prompts, counters), and far cheaper than a canonical JSON walk.
    plain = not kwargs
    if plain:
        for arg in args:
            if type(arg) not in _SCALARS:
                plain = False
                break
    if plain:
        # "(x,)" and "(x, y)" are a tuple's repr without the tuple's recursion guard and its
        # writer (a third of the repr's cost, measured); a repr holds no lone surrogate (it
        # escapes them), so the plain encode is the same bytes.
        n = len(args)
        if n == 2:
            text = f"({args[0]!r}, {args[1]!r})"
        elif n == 1:
            text = f"({args[0]!r},)"
        else:
            text = repr(args)
        data = text.encode()
    else:
        text = _encode_json(_canonical([list(args), kwargs]))
        data = text.encode("utf-8", "surrogatepass")
    # A copy of an empty hasher: the constructor's keyword argument costs as much again.
    hasher = _FINGERPRINT.copy()
    hasher.update(data)
    return hasher.hexdigest()


_FINGERPRINT = hashlib.blake2b(digest_size=8)
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _canonical(obj: Any, depth: int = 0) -> Any:
    """A JSON tree that is equal for equal arguments in any process and any run: no memory
    addresses, no set or dict ordering."""
    t = type(obj)
    if t is str or t is int or t is bool or obj is None:
        return obj
    if t is float:
        return obj if math.isfinite(obj) else repr(obj)
    if depth > _MAX_PLAIN_DEPTH:
        return "<deep>"
    if isinstance(obj, dict):
        items = [[_canonical(k, depth + 1), _canonical(v, depth + 1)] for k, v in obj.items()]
        return {"dict": sorted(items, key=_encode_json)}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v, depth + 1) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return {"set": sorted((_canonical(v, depth + 1) for v in obj), key=_encode_json)}
    if isinstance(obj, BaseModel):
        return {type(obj).__qualname__: _canonical(dict(obj), depth + 1)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return {t.__qualname__: _canonical(fields, depth + 1)}
    if isinstance(obj, (bytes, bytearray)):
        return {"bytes": hashlib.blake2b(obj, digest_size=8).hexdigest()}
    # Default reprs carry memory addresses, which differ on every run.
    if t.__repr__ is object.__repr__:  # type: ignore[comparison-overlap]
        return f"<{t.__module__}.{t.__qualname__}>"
    return repr(obj)


def _plain(value: Any, depth: int) -> bool:
    """True when `value` is JSON as it stands and would round-trip to an equal value."""
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return True
    if t is float:
        return math.isfinite(value)
    if depth > _MAX_PLAIN_DEPTH:
        return False
    # Strings and integers in a container are checked in its loop, not by a call each: this
    # walk runs on every commit.
    if t is dict:
        # The tag's key looked up once, not compared with every key.
        if TAG in value:
            return False
        for k, v in value.items():
            if type(k) is not str:
                return False
            t = type(v)
            if t is not str and t is not int and not _plain(v, depth + 1):
                return False
        return True
    if t is list:
        for v in value:
            t = type(v)
            if t is not str and t is not int and not _plain(v, depth + 1):
                return False
        return True
    return False


class _Encoder:
    """The slow path: builds a JSON tree with tags, tracking the path for error messages."""

    def __init__(self, allow_pickle: bool) -> None:
        self.allow_pickle = allow_pickle
        self.active: set[int] = set()

    def encode(self, value: Any, path: str) -> Any:
        t = type(value)
        if t is str or t is int or t is bool or value is None:
            return value
        if t is float:
            return value if math.isfinite(value) else {TAG: "float", "v": repr(value)}
        ident = id(value)
        active = self.active
        if ident in active:
            raise SerializationError(
                f"cannot store {path}: it contains itself (a circular reference)",
                path=path,
                type_name=_type_name(value),
            )
        # The containers being encoded are exactly the ones this value is nested in.
        if len(active) >= MAX_DEPTH:
            raise SerializationError(
                f"cannot store {_short(path)}: it is nested more than {MAX_DEPTH} containers "
                "deep, the most tether stores (and reads back safely). Flatten it (e.g. a "
                "list of rows with parent ids instead of a chain), or store it as a string "
                "of your own format",
                path=path,
                type_name=_type_name(value),
            )
        active.add(ident)
        try:
            return self._container(value, t, path)
        finally:
            self.active.discard(ident)

    def _container(self, value: Any, t: type, path: str) -> Any:
        if t is list:
            return [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if t is dict:
            if all(type(k) is str and k != TAG for k in value):
                return {k: self.encode(v, f"{path}[{k!r}]") for k, v in value.items()}
            return {
                TAG: "dict",
                "v": [
                    [self.encode(k, f"{path}.keys()[{i}]"), self.encode(v, f"{path}[{k!r}]")]
                    for i, (k, v) in enumerate(value.items())
                ],
            }
        if t is tuple:
            return {
                TAG: "tuple",
                "v": [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)],
            }
        if t is set or t is frozenset:
            kind = "set" if t is set else "frozenset"
            return {TAG: kind, "v": [self.encode(v, f"{path}{{{i}}}") for i, v in enumerate(value)]}
        if t is bytes or t is bytearray:
            kind = "bytes" if t is bytes else "bytearray"
            return {TAG: kind, "v": base64.b64encode(value).decode("ascii")}
        if t is dt.datetime:
            zone = getattr(value.tzinfo, "key", None)  # a ZoneInfo keeps its rules by name
            if zone:
                return {TAG: "datetime", "v": value.isoformat(), "z": zone}
            return {TAG: "datetime", "v": value.isoformat()}
        if t is dt.date:
            return {TAG: "date", "v": value.isoformat()}
        if t is dt.time:
            return {TAG: "time", "v": value.isoformat()}
        if t is dt.timedelta:
            return {TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
        if t is decimal.Decimal:
            return {TAG: "decimal", "v": str(value)}
        if t is uuid.UUID:
            return {TAG: "uuid", "v": str(value)}
        if t is StoredValue:
            # Written back as it was read: a class this process lacks keeps its stored form.
            if value.kind not in _CLASS_KINDS or type(value.type_name) is not str:
                raise SerializationError(
                    f"cannot store {path}: a StoredValue's kind is one of "
                    f"{', '.join(sorted(_CLASS_KINDS))}, not {value.kind!r}",
                    path=path,
                    type_name="tether.StoredValue",
                )
            encoded = {TAG: value.kind, "c": value.type_name}
            encoded["v"] = self.encode(value.data, f"{path}.data")
            return encoded
        if isinstance(value, pathlib.PurePath):
            return {TAG: "path", "c": self._class(value, path), "v": str(value)}
        if isinstance(value, enum.Enum):
            return {TAG: "enum", "c": self._class(value, path), "v": self.encode(value.value, path)}
        if isinstance(value, BaseModel):
            return self._model(value, path)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {
                f.name: self.encode(getattr(value, f.name), f"{path}.{f.name}")
                for f in dataclasses.fields(value)
            }
            return {TAG: "dataclass", "c": self._class(value, path), "v": fields}
        if isinstance(value, tuple) and hasattr(t, "_fields"):
            items = [self.encode(v, f"{path}.{f}") for f, v in zip(t._fields, value, strict=True)]
            return {TAG: "namedtuple", "c": self._class(value, path), "v": items}
        return self._pickle(value, path)

    def _model(self, value: BaseModel, path: str) -> Any:
        # Field by field through this encoder (not model_dump): values keep their exact
        # types (a tuple in an `Any` field stays a tuple), aliases do not matter, and a
        # field that cannot be stored is named by its path.
        cls = type(value)
        fields = {
            name: self.encode(getattr(value, name), f"{path}.{name}") for name in cls.model_fields
        }
        encoded: dict[str, Any] = {TAG: "model", "c": self._class(value, path), "v": fields}
        if value.model_fields_set != set(fields):
            encoded["set"] = sorted(value.model_fields_set)
        extra = value.__pydantic_extra__
        if extra:
            encoded["x"] = self.encode(dict(extra), f"{path}.__pydantic_extra__")
        return encoded

    def _class(self, value: Any, path: str) -> str:
        import_path, _ = _imports.path_of(type(value))
        if "<locals>" in import_path:
            raise SerializationError(
                f"cannot store {path}: its type {_type_name(value)} is defined inside a "
                "function, so it cannot be rebuilt when the value is loaded; define the "
                "class at module level",
                path=path,
                type_name=_type_name(value),
            )
        return import_path

    def _pickle(self, value: Any, path: str) -> Any:
        name = _type_name(value)
        if inspect.isawaitable(value):
            raise _not_awaited(value, path)
        if not self.allow_pickle:
            raise SerializationError(
                f"cannot store {path}: {name} is not JSON, a dataclass, a Pydantic model, an "
                "Enum or a NamedTuple, and the pickle fallback is off. Return plain data or "
                "one of those (tether.register(cls) lets processes that never imported its "
                "module restore it), or enable pickle with tether.configure(pickle=True) and "
                "TETHER_SECRET set",
                path=path,
                type_name=name,
            )
        key = _config.settings().secret
        if key is None:
            raise SerializationError(
                f"cannot store {path}: {name} needs the pickle fallback, which is on but has no "
                "key: set TETHER_SECRET (the same in every process that reads the store) so "
                "that pickles are signed and only this deployment's pickles are loaded",
                path=path,
                type_name=name,
            )
        try:
            blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            bad_path, bad = _find_unpicklable(value, path)
            if inspect.isawaitable(bad):
                raise _not_awaited(bad, bad_path) from exc
            bad_type = _type_name(bad)
            raise SerializationError(
                f"cannot store {bad_path}: {bad_type} cannot be serialized ({exc}). Return "
                "plain data from checkpoints, not live objects such as clients, files or locks",
                path=bad_path,
                type_name=bad_type,
            ) from exc
        return {TAG: "pickle", "v": base64.b64encode(blob).decode("ascii"), "mac": _mac(key, blob)}


def _short(path: str) -> str:
    # A path 100 levels deep is mostly `[0][0]...`: its two ends say where it is.
    return path if len(path) <= 160 else f"{path[:80]}…{path[-60:]}"


def _not_awaited(value: Any, path: str) -> SerializationError:
    # A coroutine (or task, or future) where a value belongs is nearly always an async call
    # missing its `await`; "cannot pickle 'coroutine'" alone does not say so.
    what = type(value).__name__
    called = getattr(value, "__qualname__", None) if inspect.iscoroutine(value) else None
    of = f" of {called!r}" if called else ""
    return SerializationError(
        f"cannot store {path}: it is a {what}{of}, not its result; did you forget `await`? "
        f"(write `await {called or 'call'}(...)` where it is called)",
        path=path,
        type_name=_type_name(value),
    )


def _find_unpicklable(value: Any, path: str, depth: int = 0) -> tuple[str, Any]:
    """Walk into an object that failed to pickle to find the attribute that is to blame."""
    if depth < 16:
        children: list[tuple[str, Any]] = []
        if isinstance(value, dict):
            children = [(f"{path}[{k!r}]", v) for k, v in value.items()]
        elif isinstance(value, (list, tuple, set, frozenset)):
            children = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        else:
            attrs = getattr(value, "__dict__", None)
            if isinstance(attrs, dict):
                children = [(f"{path}.{k}", v) for k, v in attrs.items()]
        for child_path, child in children:
            try:
                pickle.dumps(child, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                return _find_unpicklable(child, child_path, depth + 1)
    return path, value


@dataclasses.dataclass(frozen=True, slots=True)
class StoredValue:
    """A stored value whose class this process does not have, returned as data.

    Reading never imports what a stored row names: a dataclass, Pydantic model, Enum,
    NamedTuple or path is restored as its class only when the class's module is already
    imported by the application (or the class was given to `tether.register`). Otherwise it
    comes back as a `StoredValue`: `type_name` is the class as recorded (`module:qualname`),
    `data` its fields as a dict (a model or dataclass), its items as a list (a named tuple),
    or its value (an Enum member, a path). Storing a `StoredValue` again stores the original
    tagged value, so copying it through this process loses nothing.
    """

    type_name: str
    data: Any
    kind: str = "dataclass"


_CLASS_KINDS = frozenset({"path", "enum", "model", "namedtuple", "dataclass"})


class _LoadFailure(Exception):
    """A stored value that is not loaded; the path is collected on the way out."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.refused = refused
        self.segments: list[str] = []


def _failure(failure: _LoadFailure, root: str) -> SerializationError:
    path = root + "".join(reversed(failure.segments))
    if failure.refused:
        return PickleRefused(f"{path} was not loaded: {failure.message}", path=path)
    return SerializationError(f"cannot load {path}: {failure.message}", path=path)


def _decode(value: Any) -> Any:
    t = type(value)
    if t is list:
        items = []
        for i, v in enumerate(value):
            try:
                items.append(_decode(v))
            except _LoadFailure as failure:
                failure.segments.append(f"[{i}]")
                raise
        return items
    if t is not dict:
        return value
    kind = value.get(TAG)
    if kind is None:
        return _decode_fields(value, "[{!r}]")
    try:
        return _decode_tagged(kind, value, value.get("v"))
    except _LoadFailure:
        raise
    except Exception as exc:
        raise _LoadFailure(
            f"a stored {kind} value ({value.get('c', '')}) is malformed: {exc!r}"
        ) from exc


def _decode_fields(fields: Any, segment: str) -> dict[Any, Any]:
    decoded = {}
    for k, v in fields.items():
        try:
            decoded[k] = _decode(v)
        except _LoadFailure as failure:
            failure.segments.append(segment.format(k))
            raise
    return decoded


def _decode_items(data: Any) -> list[Any]:
    return _decode(list(data))  # type: ignore[no-any-return]


def _decode_tagged(kind: Any, value: dict[str, Any], data: Any) -> Any:
    if kind == "tuple":
        return tuple(_decode_items(data))
    if kind == "dict":
        return dict(_decode_items(data))
    if kind == "set":
        return set(_decode_items(data))
    if kind == "frozenset":
        return frozenset(_decode_items(data))
    if kind == "float":
        return float(data)
    if kind == "bytes":
        return base64.b64decode(data)
    if kind == "bytearray":
        return bytearray(base64.b64decode(data))
    if kind == "datetime":
        moment = dt.datetime.fromisoformat(data)
        if "z" in value:
            from zoneinfo import ZoneInfo

            moment = moment.astimezone(ZoneInfo(value["z"]))
        return moment
    if kind == "date":
        return dt.date.fromisoformat(data)
    if kind == "time":
        return dt.time.fromisoformat(data)
    if kind == "timedelta":
        return dt.timedelta(days=data[0], seconds=data[1], microseconds=data[2])
    if kind == "decimal":
        return decimal.Decimal(data)
    if kind == "uuid":
        return uuid.UUID(data)
    if kind == "pickle":
        return _unpickle(value)
    if kind in _CLASS_KINDS:
        return _decode_class(kind, value, data)
    raise _LoadFailure(f"unknown stored value kind {kind!r}; written by a newer tether?")


def _decode_class(kind: str, value: dict[str, Any], data: Any) -> Any:
    name = value.get("c")
    if type(name) is not str:
        raise _LoadFailure(f"a stored {kind} value names no class")
    cls: Any = _restore.find_kind(name, kind)
    if kind == "path":
        return cls(data) if cls is not None else StoredValue(name, str(data), kind)
    if kind == "enum":
        member = _decode(data)
        return cls(member) if cls is not None else StoredValue(name, member, kind)
    if kind == "namedtuple":
        items = _decode_items(data)
        return cls(*items) if cls is not None else StoredValue(name, items, kind)
    fields = _decode_fields(data, ".{}")
    if kind == "model":
        extra = _decode_fields(value["x"], ".{}") if "x" in value else None
        if cls is None:
            return StoredValue(name, {**fields, **extra} if extra else fields, kind)
        if extra:
            fields.update(extra)
        fields_set = set(value["set"]) if "set" in value else None
        # The stored values are already of the right types: construct, do not re-validate.
        return cls.model_construct(_fields_set=fields_set, **fields)
    if cls is None:
        return StoredValue(name, fields, kind)
    init = {f.name: fields[f.name] for f in dataclasses.fields(cls) if f.init}
    obj = cls(**init)
    for f in dataclasses.fields(cls):
        if not f.init and f.name in fields:
            object.__setattr__(obj, f.name, fields[f.name])
    return obj


def _mac(key: bytes, blob: bytes) -> str:
    return hmac.new(key, blob, hashlib.sha256).hexdigest()


def _unpickle(value: dict[str, Any]) -> Any:
    # Unpickling runs whatever code the pickle names, and anyone who can write a row could
    # have written it: only a pickle this deployment signed, with pickle on, is loaded.
    current = _config.settings()
    if not current.pickle:
        raise _LoadFailure(
            "it is a pickle and pickle is off (tether.configure(pickle=True) with TETHER_SECRET "
            "set loads pickles this deployment wrote)",
            refused=True,
        )
    if current.secret is None:
        raise _LoadFailure(
            "it is a pickle and TETHER_SECRET is not set, so it cannot be authenticated; set "
            "TETHER_SECRET to the key of the processes that wrote it",
            refused=True,
        )
    mac = value.get("mac")
    blob = base64.b64decode(value.get("v") or "")
    if type(mac) is not str or not hmac.compare_digest(
        mac.encode("utf-8", "replace"), _mac(current.secret, blob).encode()
    ):
        raise _LoadFailure(
            "it is a pickle whose signature does not match TETHER_SECRET (written with another "
            "key, by an older tether, or by someone else); it was not unpickled",
            refused=True,
        )
    return pickle.loads(blob)


def _type_name(value: Any) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


# --- errors -----------------------------------------------------------------------------------


def error_to_text(exc: BaseException) -> str:
    """An exception as stored text: its type, message and traceback, and its arguments and
    attributes as data (never a pickle), so that a resume can raise it again."""
    cls = type(exc)
    record: dict[str, Any] = {
        "type": _type_name(exc),
        "message": str(exc),
        "traceback": "".join(tb.format_exception(exc)),
        "class": f"{cls.__module__}:{cls.__qualname__}",
    }
    args, state = _error_state(exc)
    encoder = _Encoder(False)
    # Recording an error must not fail: what cannot be stored as data is left out.
    with contextlib.suppress(Exception):
        record["args"] = encoder.encode(list(args), "args")
    fields: dict[str, Any] = {}
    complete = "args" in record
    for name, value in state.items():
        try:
            fields[name] = encoder.encode(value, name)
        except Exception:
            complete = False
    if fields:
        record["fields"] = fields
    if complete:
        record["complete"] = True
    return _encode_json(record)


def _error_state(exc: BaseException) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments that rebuild `exc` and its attributes, as pickling would take them:
    `__reduce__` knows arguments that `args` lacks (an OSError's filename, a DivergenceError's
    positions)."""
    state = getattr(exc, "__dict__", None) or {}
    try:
        reduced = exc.__reduce__()
    except Exception:
        return exc.args, state
    if (
        isinstance(reduced, tuple)
        and len(reduced) >= 2
        and reduced[0] is type(exc)
        and isinstance(reduced[1], tuple)
    ):
        if len(reduced) >= 3 and isinstance(reduced[2], dict):
            state = reduced[2]
        return reduced[1], state
    return exc.args, state


def error_info(text: str) -> dict[str, str]:
    """The type, message and traceback of a stored error."""
    record = _decode_json(text)
    return {k: record.get(k, "") for k in ("type", "message", "traceback")}


def error_from_text(text: str) -> BaseException:
    """A stored error raised again: as its original class when this process already has it
    (so `except ValueError:` takes the same path live and resumed), else as CheckpointError
    with its type's name, message and traceback. Nothing is imported or unpickled: a stored
    "pickle" field (written by older versions) is ignored."""
    record = _decode_json(text)
    if type(record) is not dict:
        return CheckpointError("Exception", str(record))
    type_name = str(record.get("type") or "Exception")
    message = str(record.get("message") or "")
    rebuilt = _rebuild_error(record, type_name, message)
    if rebuilt is not None:
        return rebuilt
    return CheckpointError(type_name, message, str(record.get("traceback") or ""))


def _rebuild_error(record: dict[str, Any], type_name: str, message: str) -> BaseException | None:
    cls = _error_class(record.get("class"), type_name)
    # Only Exceptions: a stored row must not be able to raise SystemExit, KeyboardInterrupt or
    # one of tether's control signals into a process.
    if cls is None or not issubclass(cls, Exception):
        return None
    try:
        stored_args = record.get("args")
        args = tuple(_decode(stored_args)) if type(stored_args) is list else (message,)
        stored_fields = record.get("fields")
        fields = _decode_fields(stored_fields, ".{}") if type(stored_fields) is dict else {}
    except _LoadFailure:
        return None
    # Fields that could re-point the object (its __class__, __dict__) are never set.
    fields = {k: v for k, v in fields.items() if not k.startswith("__") or k == "__notes__"}
    exc: BaseException | None = None
    try:
        exc = cls(*args)
    except Exception:
        if record.get("complete") is True:
            # Its __init__ wants other arguments, but every attribute was stored: build it as
            # unpickling would, without calling __init__.
            try:
                exc = cls.__new__(cls, *args)
                exc.args = args
            except Exception:
                exc = None
    if not isinstance(exc, cls):
        return None
    try:
        for name, value in fields.items():
            setattr(exc, name, value)
    except Exception:
        return None
    return exc


def _error_class(stored: Any, type_name: str) -> type | None:
    if type(stored) is str:
        return _restore.find(stored)
    # Rows written before the class was stored: the type's dotted name, module unknown.
    if "." not in type_name:
        return _restore.find(f"builtins:{type_name}")
    parts = type_name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        found = _restore.find(f"{'.'.join(parts[:cut])}:{'.'.join(parts[cut:])}")
        if found is not None:
            return found
    return None
