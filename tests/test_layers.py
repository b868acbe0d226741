"""The package tree is the architecture: the import-linter contracts in pyproject.toml hold,
and no module of tether imports itself back through another.

The layers, top to bottom: `cli` > `server` > `mcp | ai | testing` > `_ops | _memory` >
`_runtime` > `_spend` > `_core` > `store` > `errors`. A layer imports only layers below it;
nothing imports the CLI, only the CLI imports the HTTP server, only the CLI and the HTTP
server (which serves MCP at `/mcp`) import the MCP server, and `import tether` loads neither
them nor `tether.testing`.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"


def _layers() -> list[set[str]]:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [{name.strip() for name in layer.split("|")} for layer in contract["layers"]]


def test_the_import_linter_contracts_hold() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            "--config",
            str(PYPROJECT),
            "--no-cache",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_layers_contract_names_every_package_of_tether() -> None:
    # A new package left out of the contract would be checked by nothing.
    graph = grimp.build_graph("tether")
    packages = {m for m in graph.modules if m.count(".") == 1 and graph.find_children(m)}
    packages |= {"tether.errors"}
    named = set().union(*_layers())
    assert packages <= named, f"not in any layer: {sorted(packages - named)}"


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("tether._core.context", "tether._spend.budget"),  # the core knows no budget
        ("tether.store.postgres", "tether._core.serde"),  # the store uses only errors
        ("tether._runtime.flow", "tether._ops.client"),  # Flow.replay does not reach up
        ("tether._core.config", "tether._spend.prices"),
        ("tether._ops.client", "tether._memory.api"),  # independent siblings
        ("tether._ops.client", "tether.mcp._server"),  # Client knows no surface
        ("tether.mcp._server", "tether.ai._llm"),  # independent siblings
        ("tether.mcp._server", "tether.cli._common"),  # the MCP server is below the CLI
        ("tether.mcp._server", "tether.server._auth"),  # and below the HTTP server
    ],
)
def test_the_layers_contract_rejects_an_import_upwards(importer: str, imported: str) -> None:
    graph = grimp.build_graph("tether")
    graph.add_import(importer=importer, imported=imported)
    illegal = graph.find_illegal_dependencies_for_layers(layers=_layers(), containers=set())
    assert illegal, f"{importer} -> {imported} should break the layers contract"


def test_no_import_cycles_below_the_public_api() -> None:
    # `tether` itself (the public API) imports everything, and `tether.ai` uses it; every
    # other module must sit in a graph without cycles (a function-level import that only
    # dodges a cycle is still a cycle, and grimp sees those too).
    graph = grimp.build_graph("tether")
    graph.remove_module("tether")
    cycles = [
        (a, b)
        for a in graph.modules
        for b in graph.find_modules_directly_imported_by(a)
        if graph.chain_exists(importer=b, imported=a)
    ]
    assert not cycles, f"import cycles through: {sorted(cycles)}"
