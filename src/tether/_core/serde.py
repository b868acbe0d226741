"""Values <-> stored text, and the errors for what cannot be stored.

Stored values are JSON text, so that any database (and a person with `sqlite3`)
can read them. Plain JSON values (dicts with string keys, lists, strings,
numbers, booleans, None) are stored as they are: the hot path is one type walk
and one `json` encode. Everything else is stored as a tagged object
`{"$t": kind, ...}` so that it comes back as the same type, not as a lossy
look-alike: a tuple stays a tuple, `dict[int, X]` keeps its int keys, a
dataclass or Pydantic model is rebuilt as its class. Objects with no JSON form
fall back to pickle (inside a tag) unless the fallback is switched off.

A value that cannot be stored raises SerializationError naming the path to the
offending part, e.g. `result['items'][3].client`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import inspect
import json
import math
import pathlib
import pickle
import traceback as tb
import uuid
from typing import Any

import pydantic_core
from pydantic import BaseModel

from ..errors import CheckpointError, SerializationError
from ..store._json_bytes import json_bytes
from . import imports as _imports

TAG = "$t"
_TAG_MARK = '"$t"'
_MAX_PLAIN_DEPTH = 64

# The hot path encodes and decodes with pydantic_core (Rust, already a dependency through
# Pydantic): measured ~10x faster than the json module for a 1 KB dict. Trees handed to it
# hold only JSON types (plain values, or the tagged trees built below), so its output is
# standard JSON. The encoder (`json_bytes`, with its json-module fallback for lone
# surrogates) lives with the store, which sends such trees to PostgreSQL itself; the json
# module is the decoder's fallback too.
_from_json = pydantic_core.from_json


def _encode_json(tree: Any) -> str:
    return json_bytes(tree).decode()


def _decode_json(text: str) -> Any:
    try:
        return _from_json(text)
    except ValueError:
        return json.loads(text)


def dumps(value: Any, *, allow_pickle: bool = True, root: str = "value") -> str:
    """Encode `value` as stored text. Raises SerializationError with the path on failure."""
    tree = value if _plain(value, 0) else _Encoder(allow_pickle).encode(value, root)
    return _encode_json(tree)


def loads(text: str) -> Any:
    """Decode stored text back into the value (and types) that was stored."""
    value = _decode_json(text)
    if _TAG_MARK in text:
        return _decode(value, "value")
    return value


def fingerprint(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A short stable hash of call arguments: a resumed call with other arguments is noted."""
    if not kwargs and _plain_args(args):
        data = repr(args).encode("utf-8", "surrogatepass")
    else:
        text = _encode_json(_canonical([list(args), kwargs]))
        data = text.encode("utf-8", "surrogatepass")
    return _blake2b(data, digest_size=8).hexdigest()


_blake2b = hashlib.blake2b
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain_args(args: tuple[Any, ...]) -> bool:
    # Scalars only: their repr is stable across processes and runs (the common case: ids,
    # prompts, counters), and far cheaper than a canonical JSON walk.
    for arg in args:  # noqa: SIM110 - a plain loop beats all(genexpr) on 1-3 args
        if type(arg) not in _SCALARS:
            return False
    return True


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
    if t is dict:
        for k, v in value.items():
            if type(k) is not str or k == TAG or not _plain(v, depth + 1):
                return False
        return True
    if t is list:
        return all(_plain(v, depth + 1) for v in value)
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
        if ident in self.active:
            raise SerializationError(
                f"cannot store {path}: it contains itself (a circular reference)",
                path=path,
                type_name=_type_name(value),
            )
        self.active.add(ident)
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
                f"cannot store {path}: {name} is not JSON, a dataclass or a Pydantic model, "
                "and the pickle fallback is off (tether.configure(pickle=True) enables it)",
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
        return {TAG: "pickle", "v": base64.b64encode(blob).decode("ascii")}


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


def _decode(value: Any, path: str) -> Any:
    t = type(value)
    if t is list:
        return [_decode(v, path) for v in value]
    if t is not dict:
        return value
    kind = value.get(TAG)
    if kind is None:
        return {k: _decode(v, path) for k, v in value.items()}
    data = value.get("v")
    try:
        return _decode_tagged(kind, value, data, path)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"cannot load a stored {kind} value ({value.get('c', '')}): {exc!r}", path=path
        ) from exc


def _decode_tagged(kind: str, value: dict[str, Any], data: Any, path: str) -> Any:
    if kind == "tuple":
        return tuple(_decode(v, path) for v in data)
    if kind == "dict":
        return {_decode(k, path): _decode(v, path) for k, v in data}
    if kind == "set":
        return {_decode(v, path) for v in data}
    if kind == "frozenset":
        return frozenset(_decode(v, path) for v in data)
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
        return pickle.loads(base64.b64decode(data))
    cls = _imports.resolve(value["c"])
    if kind == "path":
        return cls(data)
    if kind == "enum":
        return cls(_decode(data, path))
    if kind == "model":
        # The stored values are already of the right types: construct, do not re-validate.
        values = {k: _decode(v, path) for k, v in data.items()}
        if "x" in value:
            values.update(_decode(value["x"], path))
        fields_set = set(value["set"]) if "set" in value else None
        return cls.model_construct(_fields_set=fields_set, **values)
    if kind == "namedtuple":
        return cls(*(_decode(v, path) for v in data))
    if kind == "dataclass":
        fields = {k: _decode(v, path) for k, v in data.items()}
        init = {f.name: fields[f.name] for f in dataclasses.fields(cls) if f.init}
        obj = cls(**init)
        for f in dataclasses.fields(cls):
            if not f.init and f.name in fields:
                object.__setattr__(obj, f.name, fields[f.name])
        return obj
    raise SerializationError(f"unknown stored value kind {kind!r}; written by a newer tether?")


def _type_name(value: Any) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


# --- errors -----------------------------------------------------------------------------------


def error_to_text(exc: BaseException, *, allow_pickle: bool) -> str:
    """An exception as stored text: type, message, traceback, and the pickled error if it can be."""
    record: dict[str, Any] = {
        "type": _type_name(exc),
        "message": str(exc),
        "traceback": "".join(tb.format_exception(exc)),
    }
    if allow_pickle:
        try:
            blob = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(blob)  # some errors pickle but cannot be rebuilt; catch that now
            record["pickle"] = base64.b64encode(blob).decode("ascii")
        except Exception:
            pass
    return _encode_json(record)


def error_info(text: str) -> dict[str, str]:
    """The type, message and traceback of a stored error."""
    record = _decode_json(text)
    return {k: record.get(k, "") for k in ("type", "message", "traceback")}


def error_from_text(text: str) -> BaseException:
    """Rebuild a stored exception, as its original type when possible."""
    record = _decode_json(text)
    blob = record.get("pickle")
    if blob:
        try:
            exc = pickle.loads(base64.b64decode(blob))
            if isinstance(exc, BaseException):
                return exc
        except Exception:
            pass
    return CheckpointError(
        record.get("type", "Exception"), record.get("message", ""), record.get("traceback", "")
    )
