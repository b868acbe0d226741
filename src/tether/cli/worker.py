"""`tether worker`: run executions from the store until SIGTERM, over `tether.Worker`."""

from __future__ import annotations

import gc
import logging
from typing import Annotated

import typer

from .._core import config as _config
from .._runtime.worker import Worker
from ..errors import ConfigurationError
from ..store import exists as store_exists
from ..store import redact
from ._common import State, cli_errors, err, missing_store
from .options import (
    MAX_CONCURRENCY,
    MAX_GRACE_SECONDS,
    MAX_POLL_SECONDS,
    DbOption,
    ScriptOption,
    finite,
    queue_names,
)


def worker_command(
    db: DbOption = None,
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_CONCURRENCY,
            metavar="N",
            help="Executions run at once by this worker, sync and async alike: a sync one "
            "takes a thread, an async one a task on one event loop (thousands fit).",
        ),
    ] = 8,
    imports: Annotated[
        list[str] | None,
        typer.Option(
            "--import",
            metavar="MODULE",
            help="Module whose flows and queues this worker runs (repeatable), e.g. "
            "myapp.flows; $TETHER_IMPORTS and [tool.tether] imports in pyproject.toml add "
            "more. Executions of flows not loaded are left alone, never imported from the "
            "path their row names.",
        ),
    ] = None,
    script: ScriptOption = None,
    queues: Annotated[
        list[str] | None,
        typer.Option(
            "--queue",
            metavar="NAME",
            callback=queue_names,
            help="Serve only this queue (repeatable); default: every queue. The limits of "
            "the queues served that an imported module declares (tether.Queue) are published "
            "to the store, where they hold across the fleet.",
        ),
    ] = None,
    poll: Annotated[
        float,
        typer.Option(
            min=0.001,
            max=MAX_POLL_SECONDS,
            callback=finite,
            metavar="SECONDS",
            help="SQLite: seconds between looks for runnable work (PostgreSQL workers are "
            "woken through LISTEN/NOTIFY and look at least every second).",
        ),
    ] = 0.02,
    create: Annotated[
        bool,
        typer.Option(
            "--create",
            help="Make the SQLite store if it does not exist yet. Without it a worker refuses "
            "a store path that does not exist (a typo would otherwise wait forever on a new, "
            "empty database).",
        ),
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="auto|local|ADDRESS",
            help="Run each execution as a task on a Ray cluster instead of in this process: "
            "'auto' joins the cluster running on this machine (or $RAY_ADDRESS), 'local' "
            "starts a one-node cluster here, else the cluster's address (host:6379, "
            "ray://host:10001). Flow resources= become the tasks' Ray resources. Needs "
            "the ray extra (pip install -e '.[ray]'); a SQLite store only with a one-node "
            "cluster on this machine.",
        ),
    ] = None,
    grace: Annotated[
        float,
        typer.Option(
            min=0,
            max=MAX_GRACE_SECONDS,
            callback=finite,
            metavar="SECONDS",
            help="On SIGTERM, seconds to wait for executions to hand back.",
        ),
    ] = 30.0,
    execution: Annotated[
        str | None,
        typer.Option(
            "--execution",
            metavar="ID",
            help="Run only this execution (what `tether launcher` starts per execution): it "
            "is taken over if its process is gone or its lease ran out, and refused while a "
            "live process holds it (exit 1), once it finished (exit 1) or if there is no such "
            "execution (exit 3).",
        ),
    ] = None,
    exit_when_idle: Annotated[
        bool,
        typer.Option(
            "--exit-when-idle",
            help="Exit (0) once nothing this worker may run is runnable or running here: "
            "with --execution, when it finished or waits for input or a timer (which then "
            "holds no process); without, when the store has no runnable work for it.",
        ),
    ] = False,
) -> None:
    """Run executions from the store until SIGTERM.

    A worker runs, from the queues it serves (`--queue`, or all), queued executions, waits
    whose input arrived, due timers, and executions whose process died, of the flows it
    loaded (`--import`, `--script`, $TETHER_IMPORTS, [tool.tether] imports). It also starts
    the ticks of the scheduled flows it loaded (`@tether.flow(schedule=...)`), each once
    across all workers. On SIGTERM it stops taking work and hands back what it holds at the
    next checkpoint boundary.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with cli_errors():
        if db:
            _config.configure(db=db)
        if State.debug:
            origin = "--db or $TETHER_DB" if db else _config.settings().db_origin
            err.print(
                f"store: {redact(_config.settings().db)} ({origin})",
                style="dim",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        url = _config.settings().db
        if not create and not store_exists(url):
            raise ConfigurationError(missing_store(url, "this worker with --create"))
        worker = Worker(
            db,
            concurrency=concurrency,
            poll=poll,
            imports=imports or (),
            scripts=[script] if script else (),
            queues=queues or None,
            execution=execution,
            ray=ray,
        )
        # What startup made (modules, flows, the store) lives as long as the worker: out of
        # the collector's sight, so that no full collection walks it again.
        gc.collect()
        gc.freeze()
        worker.run(grace=grace, exit_when_idle=exit_when_idle)
