"""A wait's JSON Schema as an HTML form, and the submitted form back as a JSON value.

The schema is data from the store: it only decides which inputs to draw. A boolean is
approve / deny buttons (at the top) or yes / no choices (inside an object), an enum its
choices, an object a field per property, a string or number an input; anything else
(arrays, unions) a JSON text area. The value built from the form is checked by
`Client.input_json` against the schema itself, so this module only converts text; its
own errors (a number that is not one) and the schema's come back by field path, to be
shown next to the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

ROOT = "value"
_MAX_DEPTH = 4  # deeper objects are edited as JSON: a form nobody can read helps nobody


@dataclass(slots=True)
class Field:
    path: str  # the input's name: "value", "value.title", "value.plan.pages"
    label: str
    kind: str  # boolean | enum | object | string | integer | number | json
    required: bool = True
    description: str | None = None
    choices: list[tuple[str, str]] = field(default_factory=list)  # (JSON text, label)
    fields: list[Field] = field(default_factory=list)
    default: str = ""  # what the input shows first, as the input's text


def path_of(loc: list[Any] | tuple[Any, ...]) -> str:
    """The field path of a validation error's location (`[]` is the whole value)."""
    return ".".join([ROOT, *(str(part) for part in loc)])


def build(schema: dict[str, Any] | None) -> Field:
    """The form for a wait whose input has `schema` (None: any JSON)."""
    root = schema if isinstance(schema, dict) else {}
    return _field(root, root, ROOT, "value", required=True, depth=0)


def _resolve(node: Any, root: dict[str, Any]) -> dict[str, Any]:
    """`node` with a local `$ref` followed (`#/$defs/Name`), or {} for anything else."""
    for _ in range(8):  # refs to refs are rare; a cycle must not loop forever
        if not isinstance(node, dict):
            return {}
        ref = node.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return node
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        node = {**(target if isinstance(target, dict) else {}), **_without(node, "$ref")}
    return {}


def _without(node: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k != key}


def _field(
    node: Any, root: dict[str, Any], path: str, label: str, *, required: bool, depth: int
) -> Field:
    node = _resolve(node, root)
    required_here = required
    variants = node.get("anyOf")
    if isinstance(variants, list):
        # Optional[X] is anyOf [X, null]: the field X, left out when empty.
        kept = [v for v in variants if _resolve(v, root).get("type") != "null"]
        if len(kept) == 1 and len(kept) < len(variants):
            node = {**_resolve(kept[0], root), **_without(node, "anyOf")}
            required_here = False
    title = node.get("title")
    shown = Field(
        path,
        title if isinstance(title, str) and title else label,
        "json",
        required_here,
        node.get("description") if isinstance(node.get("description"), str) else None,
    )
    if "default" in node:
        shown.default = _text(node["default"])
    kind = node.get("type")
    if isinstance(node.get("enum"), list) and node["enum"]:
        shown.kind = "enum"
        shown.choices = [(json.dumps(v), str(v)) for v in node["enum"]]
        if "default" in node:
            shown.default = json.dumps(node["default"])
    elif kind == "boolean":
        shown.kind = "boolean"
        if "default" in node:
            shown.default = json.dumps(node["default"])
    elif kind in ("string", "integer", "number"):
        shown.kind = kind
    elif kind == "object" and isinstance(node.get("properties"), dict) and depth < _MAX_DEPTH:
        shown.kind = "object"
        needed = node.get("required") if isinstance(node.get("required"), list) else []
        for name, sub in node["properties"].items():
            shown.fields.append(
                _field(sub, root, f"{path}.{name}", name, required=name in needed, depth=depth + 1)
            )
    elif "default" in node:
        shown.default = json.dumps(node["default"], indent=2)
    return shown


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value)


_LEFT_OUT = object()


def read(form: Field, data: dict[str, str]) -> tuple[Any, dict[str, list[str]]]:
    """The value the submitted `data` gives `form`, and errors by field path (empty when
    the text converted; the schema's own checks come later, from `Client.input_json`)."""
    errors: dict[str, list[str]] = {}
    value = _read(form, data, errors)
    return (None if value is _LEFT_OUT else value), errors


def _read(f: Field, data: dict[str, str], errors: dict[str, list[str]]) -> Any:
    if f.kind == "object":
        out: dict[str, Any] = {}
        for sub in f.fields:
            got = _read(sub, data, errors)
            if got is not _LEFT_OUT:
                out[sub.path.rsplit(".", 1)[1]] = got
        return out
    raw = data.get(f.path, "")
    if f.kind == "string":
        return raw if raw or f.required else _LEFT_OUT
    if raw.strip() == "":
        if f.required:
            if f.kind == "json":
                errors.setdefault(f.path, []).append("enter a JSON value")
            elif f.kind in ("boolean", "enum"):
                errors.setdefault(f.path, []).append("choose one")
            else:
                errors.setdefault(f.path, []).append("enter a number")
        return _LEFT_OUT
    try:
        if f.kind == "integer":
            return int(raw.strip())
        if f.kind == "number":
            number = float(raw.strip())
            if not math.isfinite(number):
                raise ValueError(raw)
            return int(number) if number.is_integer() and "." not in raw else number
        return json.loads(raw)  # boolean, enum (choices are JSON text), json
    except ValueError:
        wanted = {"integer": "a whole number", "number": "a number"}.get(f.kind, "valid JSON")
        errors.setdefault(f.path, []).append(f"{raw!r} is not {wanted}")
        return _LEFT_OUT


def paths(f: Field) -> set[str]:
    """Every field path of the form (errors elsewhere are shown above it)."""
    found = {f.path}
    for sub in f.fields:
        found |= paths(sub)
    return found
