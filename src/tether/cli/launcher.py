"""`tether launcher`: one runner per runnable execution, over `Launcher`."""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .._core import config as _config
from .._runtime.kubernetes import KubernetesBackend, load_template
from .._runtime.launcher import Backend, Launcher, ProcessBackend, default_state_dir
from ..errors import ConfigurationError
from ..store import exists as store_exists
from ..store import redact
from ._common import cli_errors, missing_store
from .options import (
    MAX_CONCURRENCY,
    MAX_POLL_SECONDS,
    DbOption,
    ScriptOption,
    finite,
    queue_names,
)


class BackendName(StrEnum):
    process = "process"
    kubernetes = "kubernetes"


def launcher_command(
    backend: Annotated[
        BackendName,
        typer.Option(
            "--backend",
            metavar="process|kubernetes",
            help="Where runners run: local OS processes, or one Kubernetes Job each.",
        ),
    ] = BackendName.process,
    template: Annotated[
        Path | None,
        typer.Option(
            "--template",
            metavar="PATH",
            help="Kubernetes: the Job template (YAML) runners are made from: image, env "
            "(TETHER_DB from a Secret), resources, per-flow changes in its "
            "tether.io/flow-overrides annotation.",
        ),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            metavar="NS",
            help="Kubernetes: the namespace of the Jobs (default: the template's, else default).",
        ),
    ] = None,
    max_running: Annotated[
        int,
        typer.Option(
            "--max-running",
            min=1,
            max=MAX_CONCURRENCY,
            metavar="N",
            help="Runners alive at once, at most (those a previous launcher started count).",
        ),
    ] = 8,
    queues: Annotated[
        list[str] | None,
        typer.Option(
            "--queue",
            metavar="NAME",
            callback=queue_names,
            help="Launch runners only for executions of this queue (repeatable); default: "
            "every queue.",
        ),
    ] = None,
    imports: Annotated[
        list[str] | None,
        typer.Option(
            "--import",
            metavar="MODULE",
            help="Module whose flows the runners load (repeatable), passed to each runner; "
            "the launcher itself imports nothing and runs no flow code.",
        ),
    ] = None,
    script: ScriptOption = None,
    db: DbOption = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            metavar="DIR",
            help="Processes: where runners' lock files are kept (default: one directory per "
            "store and user under $XDG_RUNTIME_DIR or the temp directory).",
        ),
    ] = None,
    poll: Annotated[
        float,
        typer.Option(
            min=0.001,
            max=MAX_POLL_SECONDS,
            callback=finite,
            metavar="SECONDS",
            help="Seconds between looks for runnable work and ended runners.",
        ),
    ] = 0.2,
) -> None:
    """Launch one runner per runnable execution, until SIGTERM.

    A runner is `tether worker --execution ID --exit-when-idle`: it claims that execution,
    runs it until it finishes, waits or sleeps, and exits, so a waiting execution holds no
    process or pod. Input or a due timer makes it runnable again, and a new runner is
    launched; one whose runner died is launched again once its lease ran out. Runners are
    named for the execution and attempt (tether-ID-ATTEMPT), so a restarted launcher never
    launches a second runner for the same attempt.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if backend is BackendName.process and (template is not None or namespace is not None):
        raise typer.BadParameter(
            "--template and --namespace are for --backend kubernetes", param_hint="--template"
        )
    if backend is BackendName.kubernetes and template is None:
        raise typer.BadParameter(
            "--backend kubernetes needs --template job.yaml (a batch/v1 Job)",
            param_hint="--template",
        )
    if backend is BackendName.kubernetes and state_dir is not None:
        raise typer.BadParameter("--state-dir is for --backend process", param_hint="--state-dir")
    with cli_errors():
        if db:
            _config.configure(db=db)
        url = _config.settings().db
        if template is not None and url.partition("://")[0] == "sqlite":
            # Each runner is a pod, on any node: a SQLite file is one machine's (and SQLite's
            # locking is unsafe on the network file systems a shared volume would be).
            raise ConfigurationError(
                f"--backend kubernetes needs a PostgreSQL store, not {redact(url)}: its runners "
                "run in other pods, which cannot share a SQLite file. Set TETHER_DB (here and "
                "in the Job template) to postgresql://..., or run the runners on this machine "
                "with --backend process"
            )
        if not store_exists(url):
            raise ConfigurationError(missing_store(url))
        chosen: Backend
        if template is not None:
            chosen = KubernetesBackend(load_template(template), namespace=namespace)
        else:
            # Runners find the store as this launcher did, through the environment (not
            # their command line, which every user of the host can read).
            env = {**os.environ, "TETHER_DB": url}
            chosen = ProcessBackend(state_dir or default_state_dir(url), env=env)
        Launcher(
            chosen,
            db,
            max_running=max_running,
            imports=imports or (),
            script=script,
            queues=queues or None,
            poll=poll,
        ).run()
