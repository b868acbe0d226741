"""Plumbing shared by the `tether` command's sub-apps: the consoles, plain error messages
and exit codes, the client for `--db`, printing."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from .._core import config as _config
from .._core import imports as _imports
from .._ops.client import Client
from .._runtime.executor import executor
from ..errors import ConfigurationError, TetherError, UsageError
from ..store import exists as store_exists

out = Console()
err = Console(stderr=True)


class State:
    debug = False


def fail(message: str, code: int) -> NoReturn:
    err.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn errors into plain messages and exit codes (2 for usage, 1 otherwise)."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise  # Typer prints these and exits itself
    except (UsageError, ConfigurationError) as exc:
        if State.debug:
            raise
        fail(str(exc), 2)
    except TetherError as exc:
        if State.debug:
            raise
        fail(str(exc), 1)
    except KeyboardInterrupt as exc:
        if State.debug:
            raise
        hand_back()
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        raise typer.Exit(128 + signum) from None
    except Exception as exc:
        if State.debug:
            raise
        fail(f"unexpected {type(exc).__name__}: {exc} (run `tether --debug ...` for details)", 1)


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


def client_for(db: str | None) -> Client:
    if db:
        _config.configure(db=db)
    url = db or _config.settings().db
    if State.debug:
        origin = "--db or $TETHER_DB" if db else _config.settings().db_origin
        err.print(
            f"store: {url} ({origin})", style="dim", highlight=False, markup=False, soft_wrap=True
        )
    # Operating commands never need a new database: a typo in --db (or running from the wrong
    # directory) should say so, not create an empty one and report "no executions".
    if not store_exists(url):
        raise ConfigurationError(
            f"no tether database at {url}; run from the directory your agents run in, or "
            "pass --db / set TETHER_DB"
        )
    return Client(db)


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
    back (see `hand_back`)."""
    previous = _config.settings().executor
    saved = sys.stdout
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
        if queue:
            _config.configure(executor=previous)


def say(text: str) -> None:
    """Print plain text (ids, names and messages are never read as Rich markup)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def json_value(text: str, *, option: str, unchanged: str) -> Any:
    """The JSON an option gives (`--value`), or a usage error that says how to quote a
    string: a shell eats the quotes of `--value "right"`, so JSON gets the bare word.
    `unchanged` says what did not happen (e.g. "Nothing was stored.")."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        word = text.strip()
        bare = word and "\n" not in word and "'" not in word and word[0] not in '{["'
        example = json.dumps(word) if bare and len(word) <= 40 else '"hello"'
        raise typer.BadParameter(
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); a string "
            f"needs JSON quotes, e.g. {option} '{example}'. {unchanged}",
            param_hint=f"'{option}'",
        ) from None


def dump(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def json_line(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()


def who() -> str:
    return os.environ.get("USER") or os.environ.get("USERNAME") or "cli"
