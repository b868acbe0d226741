"""Plumbing shared by the `tether` command's sub-apps: the consoles, plain error messages
and exit codes, the client for `--db`, printing."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from .._core import config as _config
from .._core import imports as _imports
from .._core.serde import NON_FINITE
from .._ops.client import Client
from .._runtime.executor import executor
from ..errors import (
    ConfigurationError,
    ExecutionNotFound,
    MemoryKeyError,
    ScheduleNotFound,
    StoreError,
    TetherError,
    UsageError,
    WaitNotFound,
)
from ..store import exists as store_exists
from ..store import redact

out = Console()
err = Console(stderr=True)


class State:
    debug = False


# The exit codes, one per class of outcome, the same for every command (the table is in
# `tether --help` and the README): a script can tell "fix the command" (2) from "nothing by
# that name" (3) from "try again later" (4) without reading the message.
OK = 0
FAILED = 1  # the operation ran and failed or was refused (state, schema, conflict, --wait)
USAGE = 2  # bad arguments, JSON that does not parse, an unreadable --value file, a bad --db
NOT_FOUND = 3  # no execution, wait, schedule, memory key or version by that name
STORE = 4  # the store failed: unreachable, locked, corrupt, from a newer tether
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); SIGTERM gives 143 (128 + SIGTERM)

EXIT_CODES = """Exit codes, the same for every command:

- 0: success
- 1: the operation failed or was refused: a failed or cancelled execution (`--wait`,
  `watch`, `recover`), a state that does not allow it, input its schema rejects, a memory
  conflict
- 2: usage: a bad option or argument, JSON that does not parse, a `--value @FILE` that cannot
  be read, a bad `--db`, a database that does not exist or is not tether's
- 3: not found: no execution, wait, schedule, memory key or version by that name
- 4: the store failed: unreachable, locked, corrupt or from a newer tether (try again later,
  or fix the store)
- 130: interrupted (Ctrl-C); 143: stopped by SIGTERM. What ran in the process is handed
  back, queued
"""


def exit_code(exc: TetherError) -> int:
    """The exit code of a command that raised `exc` (see EXIT_CODES)."""
    if isinstance(exc, UsageError | ConfigurationError):
        return USAGE
    if isinstance(exc, ExecutionNotFound | WaitNotFound | MemoryKeyError | ScheduleNotFound):
        return NOT_FOUND
    if isinstance(exc, StoreError):
        return STORE
    return FAILED


def fail(message: str, code: int) -> NoReturn:
    # Every error message passes here: no password of a store URL is ever printed.
    message = redact(message, _configured_db())
    err.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _configured_db() -> str | None:
    try:
        return _config.settings().db
    except Exception:  # the settings themselves may be what failed (a bad environment)
        return None


def debug_traceback(exc: BaseException) -> str:
    """A traceback for `tether --debug`, with no password of a store URL in it (the driver's
    own messages, chained below tether's, may quote a URL or a piece of one)."""
    return redact("".join(traceback.format_exception(exc)), _configured_db())


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn errors into plain messages and the exit codes of EXIT_CODES."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise  # Typer prints these and exits itself
    except TetherError as exc:
        if State.debug:
            raise
        fail(str(exc), exit_code(exc))
    except KeyboardInterrupt as exc:
        if State.debug:
            raise
        hand_back()
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        raise typer.Exit(128 + signum) from None
    except Exception as exc:
        if State.debug:
            raise
        message = f"unexpected {type(exc).__name__}: {exc} (run `tether --debug ...` for details)"
        fail(message, FAILED)


def hand_back() -> None:
    """On Ctrl-C or SIGTERM: executions this process runs (resume, retry, replay, recover)
    stop at their next checkpoint boundary and go back to `queued`, for a worker or a later
    resume; the process waits for that (up to HAND_BACK_SECONDS), so that it leaves nothing
    on the lease of a process that is gone (which a later takeover would count as a crash).
    A second signal stops it at once."""
    runner = executor()
    if not runner.held_count():
        err.print("interrupted", style="dim")
        return
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGTERM)}
    err.print(
        "interrupted: what runs in this process stops at its next checkpoint boundary and "
        "stays queued; a `tether worker` or `tether executions resume ID` continues it",
        highlight=False,
    )
    try:
        left = runner.hand_back(HAND_BACK_SECONDS)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if left:
        err.print(
            f"{left} execution(s) did not reach a checkpoint boundary within "
            f"{HAND_BACK_SECONDS:g}s; they are left to their leases, and resumed once those "
            "run out",
            highlight=False,
        )


def missing_store(
    url: str, made_by: str = "the first run() of a flow, or `tether worker --create`"
) -> str:
    """What to say when the store a command names does not exist."""
    return (
        f"no tether database at {redact(url)}; run from the directory your agents run in (or one "
        f"below it), or pass --db / set TETHER_DB. A new store is made by {made_by}"
    )


def client_for(db: str | None, *, readonly: bool = False) -> Client:
    if db:
        _config.configure(db=db)
    url = db or _config.settings().db
    if State.debug:
        origin = "--db or $TETHER_DB" if db else _config.settings().db_origin
        err.print(
            f"store: {redact(url)} ({origin})",
            style="dim",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    # Operating commands never need a new database: a typo in --db (or running from the wrong
    # directory) should say so, not create an empty one and report "no executions".
    if not store_exists(url):
        raise ConfigurationError(missing_store(url))
    return Client(db, readonly=readonly)


@contextmanager
def reading(db: str | None) -> Iterator[Client]:
    """Around a command that only reads: for the whole command (`tether.memory` and any
    `Client()` included) the store is opened read-only, so reading another application's
    database, a store on read-only media or one a role may only SELECT changes nothing:
    no migration, no journal switch, no file created."""
    previous = _config.settings().readonly
    _config.configure(readonly=True)
    try:
        yield client_for(db, readonly=True)
    finally:
        _config.configure(readonly=previous)


def load_named(imports: list[str] | None, script: str | None) -> None:
    """Load the flows of the modules and script named on the command line (`--import`,
    `--script`): the only code, with the configured imports, a command runs flows from."""
    for module in imports or ():
        _imports.load_module(module)
    if script:
        _imports.load_script(script)


# How long a command that runs executions waits, after SIGINT or SIGTERM, for them to hand
# themselves back.
HAND_BACK_SECONDS = 30.0


class Terminated(KeyboardInterrupt):
    """SIGTERM reached a command that runs executions here: stopped as Ctrl-C stops it."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


@contextmanager
def running_here(queue: bool, as_json: bool) -> Iterator[None]:
    """Around commands that start executions: `--queue` makes this process a client only
    (the workers run them); with `--json`, what flows running here print goes to stderr so
    that stdout holds only the JSON. On SIGINT or SIGTERM the executions run here are handed
    back (see `hand_back`). A command runs what it was asked to and no more: it adopts no
    other stranded executions (`adopt`), as an application's process does."""
    previous = _config.settings().executor
    adopting = _config.settings().adopt
    saved = sys.stdout
    _config.configure(adopt=False)
    if queue:
        _config.configure(executor=False)
    if as_json:
        sys.stdout = sys.__stderr__ or sys.stderr
    # Ctrl-C raises KeyboardInterrupt by itself; SIGTERM (a supervisor, `kill`) is made to.
    handler = None
    if not queue and threading.current_thread() is threading.main_thread():
        handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)
        sys.stdout = saved
        _config.configure(adopt=adopting)
        if queue:
            _config.configure(executor=previous)


def say(text: str) -> None:
    """Print plain text (ids, names and messages are never read as Rich markup)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def value_text(given: str | None, *, option: str, unchanged: str, limit: int | None = None) -> str:
    """The text of a value option: `-` reads stdin, `@PATH` reads the file at PATH, anything
    else is the value itself. JSON never starts with `@` or is a bare `-`, so a string that
    does is written in JSON quotes (`--value '"@alice"'`) and stays a literal. `None` (the
    option not given) reads stdin when something is piped in. At most `limit` bytes are read:
    a larger value is refused before the rest is read."""
    if given is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise typer.BadParameter(
                f"give the value with {option} JSON, {option} @FILE, or pipe JSON into the command",
                param_hint=f"'{option}'",
            )
        given = "-"
    if given == "-":
        if sys.stdin is None:
            raise typer.BadParameter(f"{option} - reads stdin, and there is none. {unchanged}")
        stream: BinaryIO | None = getattr(sys.stdin, "buffer", None)
        if stream is None:  # a text-only stdin (an embedding application's)
            text = sys.stdin.read() if limit is None else sys.stdin.read(limit + 1)
            _check_size(text, "stdin", option, unchanged, limit)
            return text
        return _decoded(_read(stream, limit), "stdin", option, unchanged, limit)
    if not given.startswith("@"):
        return given
    path = Path(given[1:]).expanduser()
    if not given[1:]:
        raise typer.BadParameter(
            f"{option} @ needs a file name (@notes.json); a string that starts with @ is "
            f"given in JSON quotes: {option} '\"@...\"'. {unchanged}",
            param_hint=f"'{option}'",
        )
    try:
        with path.open("rb") as file:
            data = _read(file, limit)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise typer.BadParameter(
            f"cannot read {path} ({reason}); a string that starts with @ is given in JSON "
            f"quotes: {option} '{json.dumps(given)}'. {unchanged}",
            param_hint=f"'{option}'",
        ) from None
    return _decoded(data, str(path), option, unchanged, limit)


def _read(stream: BinaryIO, limit: int | None) -> bytes:
    return stream.read() if limit is None else stream.read(limit + 1)


def _decoded(data: bytes, where: str, option: str, unchanged: str, limit: int | None) -> str:
    _check_size(data, where, option, unchanged, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise typer.BadParameter(
            f"{where} is not UTF-8 text (byte {exc.start}); JSON is UTF-8. {unchanged}",
            param_hint=f"'{option}'",
        ) from None


def _check_size(
    data: str | bytes, where: str, option: str, unchanged: str, limit: int | None
) -> None:
    if limit is not None and len(data) > limit:
        raise typer.BadParameter(
            f"the value from {where} is larger than the limit of {limit:,} bytes "
            f"(configure(max_input_bytes=...)). {unchanged}",
            param_hint=f"'{option}'",
        )


def json_value(text: str, *, option: str, unchanged: str, given: str | None = None) -> Any:
    """The JSON an option gives (`--value`), or a usage error that says how to quote a
    string: a shell eats the quotes of `--value "right"`, so JSON gets the bare word.
    `unchanged` says what did not happen (e.g. "Nothing was stored."); `given` is what the
    option said when the text came from elsewhere (`-`, `@notes.json`)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if given is not None and (given == "-" or given.startswith("@")):
            source = "stdin" if given == "-" else given[1:]
            raise typer.BadParameter(
                f"{source} is not valid JSON ({exc.msg} at line {exc.lineno} column "
                f"{exc.colno}). {unchanged}",
                param_hint=f"'{option}'",
            ) from None
        word = text.strip()
        bare = word and "\n" not in word and "'" not in word and word[0] not in '{["'
        example = json.dumps(word) if bare and len(word) <= 40 else '"hello"'
        raise typer.BadParameter(
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); a string "
            f"needs JSON quotes, e.g. {option} '{example}'. {unchanged}",
            param_hint=f"'{option}'",
        ) from None


def dump(data: Any) -> None:
    out.print_json(strict_json(data))


def json_line(data: Any) -> None:
    sys.stdout.write(strict_json(data) + "\n")
    sys.stdout.flush()


def strict_json(data: Any) -> str:
    """`data` as standard JSON, which strict parsers (jq, JavaScript, Go) read: a float that
    is not finite (tether stores them, tagged, and rows from elsewhere may hold the bare
    words) is printed as the string `serde.NON_FINITE` spells it, as the HTTP API does."""
    try:
        return json.dumps(data, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(data), default=str, allow_nan=False)


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else NON_FINITE[repr(data)]
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def who() -> str:
    return os.environ.get("USER") or os.environ.get("USERNAME") or "cli"
