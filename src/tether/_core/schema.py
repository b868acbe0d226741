"""Wait schemas that another process can validate against.

`tether.wait(schema=...)` takes a type: `bool`, a Pydantic model, `list[str]`,
`Literal["yes", "no"]`, `Model | None`... Input usually arrives in another process
(a CLI, a web app) that never ran the flow, so the schema is stored as a
*reference* to the type (import paths of classes, and the shape of generic
aliases, unions and literals), and validated by Pydantic itself, custom validators
included. The JSON Schema is stored beside it for people and tools to read.

A stored reference is data like any stored value: rebuilding it imports nothing. A class
it names is used only when this process already has it (restore.py) and it is a kind
Pydantic validates as data (a model, dataclass, Enum, NamedTuple, TypedDict, or a standard
type); otherwise that part is checked as any JSON here, and the flow validates the input
again against the full schema when it reads it (its process has the classes).
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..errors import UsageError
from . import imports as _imports
from . import restore as _restore

# Modules whose classes a schema may name without being dataclasses, models and the like:
# the types Pydantic validates as data.
_STANDARD_MODULES = frozenset(
    {"builtins", "datetime", "decimal", "uuid", "pathlib", "ipaddress", "enum", "typing",
     "collections", "collections.abc", "re"}
)  # fmt: skip


def type_ref(tp: Any) -> Any:
    """A JSON description of a type from which `from_ref` rebuilds it in any process."""
    if tp is None or tp is type(None):
        return {"none": True}
    if tp is Any:
        return {"any": True}
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        values = list(typing.get_args(tp))
        if not all(v is None or isinstance(v, (str, int, bool)) for v in values):
            raise UsageError(f"Literal values in a wait schema must be str, int or bool: {tp!r}")
        return {"literal": values}
    if origin is typing.Union or origin is types.UnionType:
        return {"union": [type_ref(a) for a in typing.get_args(tp)]}
    if origin is typing.Annotated:
        return type_ref(typing.get_args(tp)[0])
    if origin is not None:
        args = [{"ellipsis": True} if a is Ellipsis else type_ref(a) for a in typing.get_args(tp)]
        return {"origin": type_ref(origin), "args": args}
    if isinstance(tp, type):
        path, _ = _imports.path_of(tp)
        if "<locals>" in path:
            raise UsageError(
                f"the wait schema {tp.__qualname__} is defined inside a function; define it at "
                "module level so that the process that gives the input can validate it"
            )
        return {"type": path}
    raise UsageError(
        f"a wait schema must be a type (bool, a Pydantic model, list[str], Literal[...], ...), "
        f"not {tp!r}"
    )


def from_ref(ref: Any) -> tuple[Any, bool]:
    """The type a stored reference describes, and whether every class it names was found
    (a class not found stands as `Any`)."""
    if "none" in ref:
        return type(None), True
    if "any" in ref:
        return Any, True
    if "literal" in ref:
        return typing.Literal[tuple(ref["literal"])], True
    if "union" in ref:
        members = [from_ref(r) for r in ref["union"]]
        union: Any = typing.Union[tuple(m for m, _ in members)]  # noqa: UP007
        return union, all(complete for _, complete in members)
    if "origin" in ref:
        origin, complete = from_ref(ref["origin"])
        if origin is Any:
            return Any, False
        args = []
        for a in ref["args"]:
            arg, found = (Ellipsis, True) if "ellipsis" in a else from_ref(a)
            args.append(arg)
            complete = complete and found
        return origin[tuple(args) if len(args) != 1 else args[0]], complete
    cls = _schema_class(ref["type"])
    return (Any, False) if cls is None else (cls, True)


def _schema_class(path: Any) -> type | None:
    if type(path) is not str:
        return None
    cls = _restore.find(path)
    if cls is None:
        return None
    if cls.__module__ in _STANDARD_MODULES or cls.__module__.partition(".")[0] in (
        "pydantic",
        "pydantic_core",
    ):
        return cls
    if _restore.kind_of(cls) in ("model", "dataclass", "enum", "namedtuple", "path"):
        return cls
    return cls if typing.is_typeddict(cls) else None


_adapters: dict[str, TypeAdapter[Any]] = {}


def _adapter(ref_text: str) -> TypeAdapter[Any]:
    found = _adapters.get(ref_text)
    if found is not None:
        return found
    try:
        tp, complete = from_ref(json.loads(ref_text))
        adapter: TypeAdapter[Any] = TypeAdapter(tp)
    except Exception:
        # A reference this version cannot rebuild (malformed, or naming a class Pydantic
        # cannot validate): any JSON is accepted here, and the flow validates on reading.
        return TypeAdapter(Any)
    # Only complete schemas are kept: a class missing now may be imported later.
    if complete and len(_adapters) < 256:
        _adapters[ref_text] = adapter
    return adapter


def describe(tp: Any) -> tuple[str | None, str | None]:
    """(reference, JSON Schema) as stored text for a wait's schema; (None, None) without one."""
    if tp is None:
        return None, None
    ref = json.dumps(type_ref(tp), sort_keys=True)
    try:
        schema: str | None = json.dumps(_adapter(ref).json_schema())
    except Exception:
        schema = None  # some types validate fine but have no JSON Schema; the reference is enough
    return ref, schema


def validate(ref_text: str | None, value: Any, *, from_json: bool = False) -> Any:
    """Validate input against a stored schema reference; raises pydantic.ValidationError."""
    if ref_text is None:
        return json.loads(value) if from_json else value
    adapter = _adapter(ref_text)
    if from_json:
        return adapter.validate_json(value)
    return adapter.validate_python(value)


def errors_of(exc: ValidationError) -> list[dict[str, Any]]:
    """Validation errors as plain data (location, message, type)."""
    return [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False)
    ]
