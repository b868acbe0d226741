"""Process settings. The environment is read here and nowhere else."""

from __future__ import annotations

import gc
import os
import re
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

from ..errors import ConfigurationError
from ..store import Store, open_store, redact
from .model_price import ModelPrice

DEFAULT_DB: Final = "sqlite:///.tether/tether.db"
# The largest stored value by default: what `Client.input()` has always taken, and far more
# than a checkpoint result should be (store large data elsewhere and return its reference).
DEFAULT_MAX_VALUE_BYTES: Final = 16 * 1024 * 1024
# A stored value is one text field: PostgreSQL holds at most 1 GB in one.
MAX_VALUE_BYTES_CEILING: Final = 1024 * 1024 * 1024
STORE_DIR: Final = ".tether"


def find_store(start: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """The default store and why: the `.tether/tether.db` of the nearest directory, from
    `start` (the working directory) up through its parents, that has a `.tether/` (as git
    finds `.git`); else `./.tether/tether.db`, created in the working directory when first
    used. Returns (url, where it came from)."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / STORE_DIR).is_dir():
            where = "found in the working directory" if folder == here else f"found in {folder}"
            return f"sqlite:///{folder / STORE_DIR / 'tether.db'}", where
    return DEFAULT_DB, "default: none found, so in the working directory"


_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def configured_imports(
    start: str | os.PathLike[str] | None = None,
) -> tuple[list[str], str, str | None]:
    """The modules whose flows a process that resumes executions loads besides its own:
    `TETHER_IMPORTS` (comma-separated), else the `imports` list of the `[tool.tether]` table
    of the nearest pyproject.toml from `start` (the working directory) up. Returns (modules,
    where they came from, the pyproject's directory or None). Read when needed, not at start:
    a process that only reads executions never looks."""
    raw = os.environ.get("TETHER_IMPORTS", "")
    if raw.strip():
        modules = [m.strip() for m in raw.split(",") if m.strip()]
        return _checked_modules(modules, "TETHER_IMPORTS"), "TETHER_IMPORTS", None
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        path = folder / "pyproject.toml"
        if path.is_file():
            return _pyproject_imports(path)
    return [], "", None


def _pyproject_imports(path: Path) -> tuple[list[str], str, str | None]:
    origin = f"[tool.tether] imports in {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read {path} (for [tool.tether] imports): {exc}") from None
    table = data.get("tool", {}).get("tether", {})
    if not isinstance(table, dict) or "imports" not in table:
        return [], "", None
    modules = table["imports"]
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigurationError(
            f'{origin}: expected a list of module names, e.g. imports = ["myapp.agents"], '
            f"not {modules!r}"
        )
    return _checked_modules(modules, origin), origin, str(path.parent)


def _checked_modules(modules: list[str], origin: str) -> list[str]:
    for module in modules:
        if not _MODULE.fullmatch(module):
            raise ConfigurationError(
                f"{origin}: {module!r} is not a module name (dotted, like myapp.agents)"
            )
    return modules


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


@dataclass(frozen=True, slots=True)
class Settings:
    db: str
    pickle: bool = False
    # The key that authenticates pickled values (`TETHER_SECRET`); without it nothing is
    # pickled or unpickled even with pickle on.
    secret: bytes | None = field(default=None, repr=False)
    strict: bool = False
    durability: str = "normal"
    max_workers: int = 32
    max_async: int = 10_000
    slow_callback_seconds: float = 0.5
    lease_seconds: float = 30.0
    crash_loop_limit: int = 5
    crash_loop_backoff: float = 1.0
    # How long a SQLite connection waits for another one's write lock before StoreBusy.
    busy_timeout: float = 60.0
    executor: bool = True
    # The process only reads: stores open read-only (see configure()).
    readonly: bool = False
    # A process that runs executions takes over the stranded ones of the flows it loaded.
    adopt: bool = True
    max_input_bytes: int = 16 * 1024 * 1024
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    clock: Callable[[], float] = time.time
    # The model `tether.llm` uses when given none (`TETHER_MODEL`), and user-given prices.
    model: str | None = None
    prices: Mapping[str, ModelPrice] | None = None
    # Where `db` came from (said by `tether --debug`): TETHER_DB, configure(db=), found...
    db_origin: str = "configure(db=...)"
    # The collector's thresholds (`gc.set_threshold`), when given (see `apply_gc`).
    gc_threshold: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks: the store URL without its password.
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        shown["db"] = redact(self.db)
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


_OFF = {"0", "off", "false", "no"}


def _from_env() -> Settings:
    executor = os.environ.get("TETHER_EXECUTOR", "on").strip().lower() not in _OFF
    adopt = os.environ.get("TETHER_ADOPT", "on").strip().lower() not in _OFF
    db, origin = (
        (os.environ["TETHER_DB"], "$TETHER_DB") if os.environ.get("TETHER_DB") else find_store()
    )
    found = Settings(
        db=db,
        db_origin=origin,
        executor=executor,
        adopt=adopt,
        model=os.environ.get("TETHER_MODEL") or None,
        secret=os.environ.get("TETHER_SECRET", "").encode() or None,
        gc_threshold=_gc_from_env(),
    )
    numbers: dict[str, Any] = {}
    for name, setting, kind, least in (
        ("TETHER_MAX_ASYNC", "max_async", int, 1),
        ("TETHER_CRASH_LOOP_LIMIT", "crash_loop_limit", int, 1),
        ("TETHER_CRASH_LOOP_BACKOFF", "crash_loop_backoff", float, 0),
        ("TETHER_BUSY_TIMEOUT", "busy_timeout", float, 0.001),
        ("TETHER_LEASE_SECONDS", "lease_seconds", float, 0.1),
        ("TETHER_MAX_VALUE_BYTES", "max_value_bytes", int, 1024),
    ):
        text = os.environ.get(name, "").strip()
        if not text:
            continue
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number of seconds"
            raise ConfigurationError(f"{name} must be {what}, not {text!r}") from None
        if value < least:
            raise ConfigurationError(f"{name} must be at least {least}")
        numbers[setting] = value
    if "max_value_bytes" in numbers:
        _checked_value_bytes(numbers["max_value_bytes"], "TETHER_MAX_VALUE_BYTES")
    return replace(found, **numbers)


# The thresholds of processes tether owns (`tether worker`, the CLI) unless told otherwise.
# Python's (700, 10, 10) makes a full collection every 70,000 net allocations; each walks
# every object of every live execution, so with thousands of them alive the collector took a
# third of the CPU. Raising the first threshold makes young collections rarer, the others
# full ones; reference counting frees almost all of tether's garbage anyway.
OWNED_GC_THRESHOLD: Final = (50_000, 20, 100)
_PYTHON_GC_THRESHOLD: Final = (700, 10, 10)


def _gc_from_env() -> tuple[int, int, int] | None:
    text = os.environ.get("TETHER_GC_THRESHOLD", "").strip()
    if not text:
        return None
    try:
        values: Any = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = text
    return _checked_gc(values, "TETHER_GC_THRESHOLD")


def _checked_gc(value: Any, name: str) -> tuple[int, int, int]:
    """One to three whole numbers, each at least 1: the first generation's threshold, then
    the older ones' (Python's own values stand for those not given)."""
    given = (value,) if isinstance(value, int) else value
    if (
        not isinstance(given, tuple)
        or not 1 <= len(given) <= 3
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in given)
    ):
        raise ConfigurationError(
            f"{name} is one to three whole numbers of at least 1 (the garbage collector's "
            f"thresholds, as gc.set_threshold takes them: e.g. 50000 or 50000,20,100), not "
            f"{value!r}. To turn the collector off, call gc.disable() yourself"
        )
    return (*given, *_PYTHON_GC_THRESHOLD[len(given) :])


def apply_gc(*, owned: bool) -> tuple[int, int, int] | None:
    """Set the collector's thresholds from the `gc_threshold` setting; in a process tether
    owns (`owned`: `tether worker`, the CLI) its own default when none is set. A user's
    process is left as it is unless they set one. The thresholds set, or None."""
    chosen = settings().gc_threshold
    if chosen is None and owned:
        chosen = OWNED_GC_THRESHOLD
    if chosen is not None:
        gc.set_threshold(*chosen)
    return chosen


def _checked_value_bytes(size: Any, name: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise ConfigurationError(f"{name} is a whole number of bytes, not {size!r}")
    if not 1024 <= size <= MAX_VALUE_BYTES_CEILING:
        raise ConfigurationError(
            f"{name} must be between 1024 and {MAX_VALUE_BYTES_CEILING:,} bytes (1 GiB, the "
            f"most PostgreSQL holds in one field), not {size:,}"
        )
    return size


_lock = threading.RLock()
_settings: Settings | None = None
_stores: dict[tuple[str, str, float, bool], Store] = {}


def settings() -> Settings:
    global _settings
    current = _settings
    if current is None:
        with _lock:
            if _settings is None:
                _settings = _from_env()
            current = _settings
    return current


def configure(
    *,
    db: str | _Unset = UNSET,
    pickle: bool | _Unset = UNSET,
    strict: bool | _Unset = UNSET,
    durability: str | _Unset = UNSET,
    max_workers: int | _Unset = UNSET,
    max_async: int | _Unset = UNSET,
    slow_callback_seconds: float | _Unset = UNSET,
    lease_seconds: float | _Unset = UNSET,
    crash_loop_limit: int | _Unset = UNSET,
    crash_loop_backoff: float | _Unset = UNSET,
    busy_timeout: float | _Unset = UNSET,
    executor: bool | _Unset = UNSET,
    readonly: bool | _Unset = UNSET,
    adopt: bool | _Unset = UNSET,
    max_input_bytes: int | _Unset = UNSET,
    max_value_bytes: int | _Unset = UNSET,
    clock: Callable[[], float] | _Unset = UNSET,
    model: str | _Unset | None = UNSET,
    prices: Mapping[str, ModelPrice] | _Unset | None = UNSET,
    gc_threshold: int | tuple[int, ...] | _Unset = UNSET,
) -> None:
    """Set process-wide options. Only the options given change.

    - `db`: store URL, e.g. `sqlite:///path/to/tether.db`. Default: `TETHER_DB`, else the
      `.tether/tether.db` of the working directory or its nearest parent that has a
      `.tether/` directory, else `./.tether/tether.db` (created when first used).
    - `pickle`: allow the pickle fallback for values that are not JSON, dataclasses,
      Pydantic models, Enums or NamedTuples (default False: such values raise
      SerializationError). On, it also needs `TETHER_SECRET` in the environment: pickles
      are written with an HMAC of that key and unpickled only when it matches, because
      unpickling runs code and anyone who can write the store could otherwise run theirs.
    - `strict`: a resumed checkpoint call whose arguments changed fails with DivergenceError
      instead of recording a warning (default False).
    - `durability`: `"normal"` survives process crashes; `"full"` also survives power loss,
      at the cost of a disk sync per checkpoint.
    - `max_workers`: sync executions this process runs at once, one thread each (default 32).
    - `max_async`: async executions this process runs at once (default 10,000;
      `TETHER_MAX_ASYNC`). They run as tasks on one shared event loop thread (`tether-loop`),
      not a thread each; more wait for a free slot, their leases kept.
    - `slow_callback_seconds`: when the same call has kept the shared event loop from
      turning for this long (default 0.5), a warning names the checkpoint whose code blocks
      it, in the log and as a `warning` event on its execution: a blocking call in an async
      checkpoint stalls every execution on the loop. A loop late as long only because it
      runs many short callbacks (thousands of executions at once) blames nobody: an INFO
      line in the `tether.loop` log says it is saturated.
    - `lease_seconds`: how long a lease lasts at least without a heartbeat (default 30;
      heartbeats keep it between 1 and 4/3 of this ahead; `TETHER_LEASE_SECONDS`, for worker
      processes and launched runners). A write that fails for a
      transient store fault (busy, disk full, read-only, connection lost) is retried with
      backoff for this long; then the execution is released (never failed) and continues
      once the store is back.
    - `crash_loop_limit`: how many times in a row the process running an execution may die
      (or lose it) without the execution committing progress before tether fails it with
      `CrashLoopError` instead of taking it over again (default 5;
      `TETHER_CRASH_LOOP_LIMIT`).
    - `crash_loop_backoff`: from the second such takeover on, the execution is handed back
      to run no sooner than this many seconds later, doubling each time up to 5 minutes
      (default 1; `TETHER_CRASH_LOOP_BACKOFF`). Other executions are claimed meanwhile.
    - `busy_timeout`: how long a SQLite connection waits for another connection's write
      lock before the write fails with StoreBusy (default 60 seconds; `TETHER_BUSY_TIMEOUT`).
      Applies to stores opened after it is set.
    - `executor`: False makes this process a client only (`TETHER_EXECUTOR=off`): it records
      and operates executions but never runs one; `tether worker` processes do.
    - `readonly`: True makes this process a reader only: stores it opens from then on are
      opened read-only (no migration, no journal switch, nothing created; a database on
      read-only media or a PostgreSQL role that may only SELECT works), and a write raises
      `tether.errors.StoreOpenedReadOnly`. `Client(readonly=True)` does this for one client.
    - `adopt`: a process that runs executions (its first `run()` or `resume()`, or
      `tether.launch()`) takes over, from then on while it lives, the stranded executions
      of the flows it loaded: those whose process died or whose lease ran out, and those
      whose input or child arrived after the process that parked them died (default True;
      `TETHER_ADOPT=off` turns it off). Executions queued for workers are left to them.
    - `max_input_bytes`: the largest input `Client.input()` accepts (default 16 MiB).
    - `max_value_bytes`: the largest value stored, as its JSON: a checkpoint or flow result,
      flow arguments, wait input, a memory value (default 16 MiB; `TETHER_MAX_VALUE_BYTES`;
      1 KiB to 1 GiB). A larger one raises SerializationError naming it, and nothing is
      written.
    - `clock`: the time source for wait deadlines and timers (tests inject a fake one).
    - `model`: the model `tether.llm()` calls when it is given none, as Pydantic AI names it
      (`"openai:gpt-4o"`); `TETHER_MODEL` sets it too.
    - `prices`: `{model: tether.ModelPrice(...)}`, prices of models genai-prices does not know
      (or overrides of the ones it does), keyed by model name or `provider:model`. Replaces
      the prices given before.
    - `gc_threshold`: the garbage collector's thresholds for this process, as
      `gc.set_threshold` takes them: one to three whole numbers of at least 1, e.g. `50_000`
      or `(50_000, 20, 100)` (`TETHER_GC_THRESHOLD=50000,20,100`). Set here, they apply at
      once; from the environment, when this process first runs an execution. Left unset,
      tether never changes them in your process; `tether worker` and the CLI use
      (50000, 20, 100), because thousands of live executions make Python's default
      thresholds collect often and each collection walk all of them.
    """
    changes: dict[str, Any] = {}
    for key, value in (
        ("db", db),
        ("pickle", pickle),
        ("strict", strict),
        ("durability", durability),
        ("max_workers", max_workers),
        ("max_async", max_async),
        ("slow_callback_seconds", slow_callback_seconds),
        ("lease_seconds", lease_seconds),
        ("crash_loop_limit", crash_loop_limit),
        ("crash_loop_backoff", crash_loop_backoff),
        ("busy_timeout", busy_timeout),
        ("executor", executor),
        ("readonly", readonly),
        ("adopt", adopt),
        ("max_input_bytes", max_input_bytes),
        ("max_value_bytes", max_value_bytes),
        ("clock", clock),
        ("model", model),
        ("prices", prices),
        ("gc_threshold", gc_threshold),
    ):
        if value is not UNSET:
            changes[key] = value
    if "db" in changes:
        changes["db_origin"] = "configure(db=...)"
    if "db" in changes and (not isinstance(changes["db"], str) or "://" not in changes["db"]):
        raise ConfigurationError(
            "db must be a store URL such as sqlite:///path/to/tether.db, not "
            f"{redact(str(changes['db']))!r}"
        )
    if "max_workers" in changes and changes["max_workers"] < 1:
        raise ConfigurationError("max_workers must be at least 1")
    if "max_async" in changes and changes["max_async"] < 1:
        raise ConfigurationError("max_async must be at least 1")
    if "max_value_bytes" in changes:
        _checked_value_bytes(changes["max_value_bytes"], "max_value_bytes")
    if "slow_callback_seconds" in changes and changes["slow_callback_seconds"] <= 0:
        raise ConfigurationError("slow_callback_seconds must be positive")
    if "lease_seconds" in changes and changes["lease_seconds"] <= 0:
        raise ConfigurationError("lease_seconds must be positive")
    if "crash_loop_limit" in changes and changes["crash_loop_limit"] < 1:
        raise ConfigurationError("crash_loop_limit must be at least 1")
    if "crash_loop_backoff" in changes and changes["crash_loop_backoff"] < 0:
        raise ConfigurationError("crash_loop_backoff must be 0 or more seconds")
    if "busy_timeout" in changes and not changes["busy_timeout"] > 0:
        raise ConfigurationError("busy_timeout must be above 0 seconds")
    chosen = changes.get("model")
    if chosen is not None and (not isinstance(chosen, str) or not chosen):
        raise ConfigurationError(f"model is a model name such as 'openai:gpt-4o', not {chosen!r}")
    if changes.get("prices") is not None:
        changes["prices"] = _checked_prices(changes["prices"])
    if "gc_threshold" in changes:
        changes["gc_threshold"] = _checked_gc(changes["gc_threshold"], "gc_threshold")
    global _settings
    with _lock:
        _settings = replace(settings(), **changes)
    if "gc_threshold" in changes:
        gc.set_threshold(*changes["gc_threshold"])


def _checked_prices(prices: Any) -> dict[str, ModelPrice]:
    if not isinstance(prices, Mapping):
        raise ConfigurationError(
            f"prices is a mapping of model name to tether.ModelPrice, not {prices!r}"
        )
    for name, price in prices.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a price's key is a model name, not {name!r}")
        if not isinstance(price, ModelPrice):
            raise ConfigurationError(
                f"the price of {name!r} must be a tether.ModelPrice(input_per_mtok=..., "
                f"output_per_mtok=...), not {price!r}"
            )
    return dict(prices)


def store_for(url: str | None = None, *, readonly: bool | None = None) -> Store:
    """The process's shared store for a URL (the configured one by default), opened once;
    read-only when `readonly` says so (default: the `readonly` setting)."""
    current = settings()
    ro = current.readonly if readonly is None else bool(readonly)
    key = (url or current.db, current.durability, current.busy_timeout, ro)
    found = _stores.get(key)
    if found is not None:
        return found
    with _lock:
        found = _stores.get(key)
        if found is None:
            found = open_store(
                key[0], durability=current.durability, busy_timeout=current.busy_timeout,
                readonly=ro,
            )  # fmt: skip
            _stores[key] = found
        return found


def reset() -> None:
    """Forget settings and close stores (tests, and processes that fork)."""
    global _settings
    with _lock:
        for store in _stores.values():
            store.close()
        _stores.clear()
        _settings = None
