"""Wait schemas that another process can validate against.

`tether.wait(schema=...)` takes a type: `bool`, a Pydantic model, `list[str]`,
`Literal["yes", "no"]`, `Model | None`... Input usually arrives in another process
(a CLI, a web app) that never ran the flow, so the schema is stored as a
*reference* to the type (import paths of classes, and the shape of generic
aliases, unions and literals) that any process can rebuild and hand to Pydantic.
Input is then validated by Pydantic itself, custom validators included. The JSON
Schema is stored beside it for people and tools to read.
"""

from __future__ import annotations

import json
import types
import typing
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..errors import UsageError
from . import imports as _imports


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


def from_ref(ref: Any) -> Any:
    if "none" in ref:
        return type(None)
    if "any" in ref:
        return Any
    if "literal" in ref:
        return typing.Literal[tuple(ref["literal"])]
    if "union" in ref:
        return typing.Union[tuple(from_ref(r) for r in ref["union"])]  # noqa: UP007
    if "origin" in ref:
        origin = from_ref(ref["origin"])
        args = tuple(Ellipsis if "ellipsis" in a else from_ref(a) for a in ref["args"])
        return origin[args if len(args) != 1 else args[0]]
    path = ref["type"]
    if path.startswith("builtins:"):
        import builtins

        return getattr(builtins, path.partition(":")[2])
    return _imports.resolve(path)


@lru_cache(maxsize=256)
def _adapter(ref_text: str) -> TypeAdapter[Any]:
    return TypeAdapter(from_ref(json.loads(ref_text)))


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
