"""Where the default store is: the nearest `.tether/` from the working directory up, as git
finds `.git`; a new one in the working directory when there is none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import SRC, TESTS
from tether._core.config import DEFAULT_DB, find_store

RUN_ONE = (
    "import tether\n"
    "@tether.flow\n"
    "def hello() -> str:\n"
    "    return 'hi'\n"
    "print(hello.run().result(timeout=30))\n"
)


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("TETHER_DB",)}
    clean["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(SRC)])
    return clean


def python(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=60, cwd=cwd, env=env()
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_find_store_walks_up_to_the_nearest_tether_directory(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_store(deep)[0] == DEFAULT_DB  # none anywhere up (tmp dirs have none)
    (tmp_path / ".tether").mkdir()
    url, where = find_store(deep)
    assert url == f"sqlite:///{tmp_path.resolve() / '.tether' / 'tether.db'}"
    assert where == f"found in {tmp_path.resolve()}"
    (deep / ".tether").mkdir()
    assert find_store(deep) == (
        f"sqlite:///{deep.resolve() / '.tether' / 'tether.db'}",
        "found in the working directory",
    )


def test_from_a_subdirectory_the_cli_and_the_library_find_the_store(tmp_path: Path) -> None:
    project = tmp_path / "project"
    sub = project / "src" / "pkg"
    sub.mkdir(parents=True)
    python(project, "-c", RUN_ONE)  # no store anywhere: created in the working directory
    assert (project / ".tether" / "tether.db").exists()
    listed = python(sub, "-m", "tether", "--debug", "executions", "list")
    assert "hello" in listed.stdout and "succeeded" in listed.stdout
    store = project.resolve() / ".tether" / "tether.db"
    assert f"store: sqlite:///{store} (found in {project.resolve()})" in listed.stderr
    counted = python(sub, "-c", "import tether; print(len(tether.Client().list()))")
    assert counted.stdout.strip() == "1"
    python(sub, "-c", RUN_ONE)  # a flow run from the subdirectory records into the same store
    assert not (sub / ".tether").exists()
    again = python(sub, "-m", "tether", "executions", "list", "--json")
    assert again.stdout.count('"flow": "hello"') == 2


def test_help_of_db_says_how_the_store_is_found() -> None:
    from typer.testing import CliRunner

    from tether.cli import app

    shown = CliRunner().invoke(app, ["executions", "list", "--help"], terminal_width=200)
    assert "nearest parent" in shown.stdout and "--debug" in shown.stdout
