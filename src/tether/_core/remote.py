"""Ray, as far as one execution's calls need it: `resources=` checked, and a checkpoint body
(`@tether.checkpoint(runtime="ray")`) run as a Ray task while the flow stays where it runs.

Only the body travels: the call's identity, its retries, its timeout and its commit stay in
the flow's process, so its result is recorded exactly as a local checkpoint's (the Ray object
holding it is read back here and committed; it is never the only copy of anything recorded).
Ray's own task retry is off (`max_retries=0`): a retry is the checkpoint's, recorded as an
attempt. Ray is imported only when a Ray body runs, so `import tether` never needs it.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigurationError, UsageError

RUNTIMES = ("local", "ray")
# Ray's task options tether passes on; `resources` holds custom resources by name.
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory", "resources")


def checked_resources(resources: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """`resources=` as Ray task options, or UsageError naming what is wrong."""
    if resources is None:
        return {}
    if not isinstance(resources, Mapping):
        raise UsageError(
            f"{what}: resources is a dict such as {{'num_cpus': 1}}, not {resources!r}"
        )
    checked: dict[str, Any] = {}
    for key, value in resources.items():
        if key not in RESOURCE_KEYS:
            raise UsageError(
                f"{what}: unknown resource {key!r}; use {', '.join(RESOURCE_KEYS)} (custom "
                "resources go inside 'resources', e.g. {'resources': {'accelerator': 1}})"
            )
        if key == "resources":
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise UsageError(
                    f"{what}: 'resources' maps custom resource names to amounts, not {value!r}"
                )
            checked[key] = {k: _amount(v, f"{what}: resource {k!r}") for k, v in value.items()}
        else:
            checked[key] = _amount(value, f"{what}: {key}")
    return checked


def _amount(value: Any, what: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{what} is a number, not {value!r}")
    if value < 0:
        raise UsageError(f"{what} must be 0 or more, not {value!r}")
    return value


def checked_runtime(runtime: str, what: str) -> str:
    if runtime not in RUNTIMES:
        raise UsageError(f"{what}: runtime is 'local' or 'ray', not {runtime!r}")
    return runtime


def import_ray() -> Any:
    """The `ray` module, or ConfigurationError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigurationError(
            "running on Ray needs the `ray` package: install tether's `ray` extra "
            "(pip install -e '.[ray]' in a clone of tether) or pip install 'ray>=2.44'"
        ) from None
    return ray


def _reference(fn: Callable[..., Any], checkpoint: object) -> tuple[str, str] | None:
    """(module, qualname) that names the checkpoint where Ray workers can import it: the
    flow's own module, as this process imported it (never a name read from the store). None
    for a script's `__main__`, whose body Ray ships by value instead."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<locals>" in qualname:
        return None
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return (module, qualname) if found is checkpoint else None


def _invoke(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """On the Ray worker: the checkpoint body, called. An async body runs on a loop of its own."""
    if isinstance(target, tuple):
        module, qualname = target
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
        fn = found.fn
    else:
        fn = target
    value = fn(*args, **kwargs)
    if inspect.isawaitable(value):
        return asyncio.run(_awaited(value))
    return value


async def _awaited(value: Any) -> Any:
    return await value


class RayBody:
    """Runs one checkpoint's body as a Ray task: `call` from sync code, `call_async` awaited
    on the flow's event loop (the loop never blocks on Ray)."""

    __slots__ = ("_checkpoint", "_fn", "_remote", "_resources", "_target")

    def __init__(self, fn: Callable[..., Any], checkpoint: object, resources: dict[str, Any]):
        self._fn = fn
        self._checkpoint = checkpoint
        self._resources = resources
        self._remote: Any = None
        self._target: Any = None

    def _submit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ray = import_ray()
        if self._remote is None:
            # Resolved at the first call, when the flow's module has finished importing.
            self._target = _reference(self._fn, self._checkpoint) or self._fn
            self._remote = ray.remote(_invoke).options(max_retries=0, **self._resources)
        return self._remote.remote(self._target, args, kwargs)

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        ray = import_ray()
        ref = self._submit(args, kwargs)
        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            raise TimeoutError from None
        except ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from None

    async def call_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ray = import_ray()
        ref = self._submit(args, kwargs)
        try:
            return await asyncio.wrap_future(ref.future())
        except asyncio.CancelledError:
            # A timeout or a cancelled flow: the body stops on the cluster too.
            ray.cancel(ref, force=True)
            raise
        except ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from None


def _cause(error: Any) -> BaseException:
    """What the body raised, not Ray's wrapper: `retry_on` and the recorded error see it."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error
