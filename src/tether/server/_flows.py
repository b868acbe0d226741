"""The flows a server can start: those of the modules given with `--import`, found by
name, with arguments from a client validated against the flow function's signature."""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .._core import imports as _imports
from .._runtime.flow import Flow
from ..errors import FlowNotFoundError, InputValidationError, UsageError


def load(modules: Sequence[str]) -> dict[str, Flow[..., Any]]:
    """Import each module (starting nothing) and collect its flows by name."""
    flows: dict[str, Flow[..., Any]] = {}
    for name in modules:
        try:
            with _imports.loading(f"the module {name}", name):
                module = importlib.import_module(name)
        except ImportError as exc:
            raise UsageError(f"--import {name}: {exc}") from exc
        flows.update(found(module))
    return flows


def found(module: ModuleType) -> dict[str, Flow[..., Any]]:
    return {v.name: v for v in vars(module).values() if isinstance(v, Flow)}


def describe(flow: Flow[..., Any]) -> dict[str, Any]:
    return {
        "name": flow.name,
        "queue": flow.queue,
        "async": flow.is_async,
        "signature": f"{flow.name}{inspect.signature(flow.fn)}",
    }


def find(flows: dict[str, Flow[..., Any]], name: str) -> Flow[..., Any]:
    flow = flows.get(name)
    if flow is None:
        known = ", ".join(sorted(flows)) or "none (start the server with --import MODULE)"
        raise FlowNotFoundError(f"no flow named {name!r} on this server; it knows: {known}")
    return flow


def bind(
    flow: Flow[..., Any], args: list[Any], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments as the flow takes them: bound to its signature, and each annotated
    parameter validated (and converted: a dict becomes the model a parameter names) by
    Pydantic. InputValidationError, with one error per problem, when they do not fit."""
    signature = inspect.signature(flow.fn)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InputValidationError(
            f"arguments do not fit flow {flow.name}{signature}: {exc}",
            [{"type": "arguments", "loc": ["args"], "msg": str(exc)}],
        ) from None
    try:
        hints = typing.get_type_hints(flow.fn)
    except Exception:
        hints = {}  # annotations this process cannot resolve: binding is all we can check
    errors: list[dict[str, Any]] = []
    for name, value in list(bound.arguments.items()):
        hint = hints.get(name)
        kind = signature.parameters[name].kind
        if hint is None or kind in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            continue
        try:
            bound.arguments[name] = TypeAdapter(hint).validate_python(value)
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_context=False, include_input=False):
                errors.append({"type": err["type"], "loc": [name, *err["loc"]], "msg": err["msg"]})
        except Exception:  # a hint Pydantic cannot build a validator for: leave it unchecked
            continue
    if errors:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        raise InputValidationError(
            f"arguments of flow {flow.name!r} are not valid: {details}", errors
        )
    return bound.args, bound.kwargs
