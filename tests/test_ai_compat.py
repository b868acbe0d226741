"""The compatibility floor: the lower bounds pyproject.toml declares are the versions the floor
run of scripts/test installs (constraints/floor.txt), so each one is really tested."""

from __future__ import annotations

import os
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# The frameworks tether is built on: each needs a lower bound, pinned by the floor run.
FRAMEWORKS = {
    "pydantic-ai-slim",
    "pydantic",
    "genai-prices",
    "psycopg",
    "typer",
    "rich",
    "croniter",
    "pydantic-evals",
}
# Pinned too, though not declared: they come with psycopg's extras.
EXTRAS_OF_PSYCOPG = {"psycopg-binary", "psycopg-pool"}


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints" / "floor.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            pins[canonicalize_name(name)] = pinned.strip()
    return pins


def _lower_bounds() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in ("ai", "postgres", "test", "evals"):
        declared += project["optional-dependencies"][extra]
    bounds: dict[str, set[str]] = {}
    for text in declared:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name in FRAMEWORKS:
            floors = {spec.version for spec in requirement.specifier if spec.operator == ">="}
            bounds.setdefault(name, set()).update(floors or {"(none)"})
    return bounds


def test_every_framework_has_one_lower_bound_and_the_floor_pins_it() -> None:
    bounds = _lower_bounds()
    pins = _pins()
    assert set(bounds) == FRAMEWORKS
    for name, floors in bounds.items():
        assert len(floors) == 1, f"{name} is declared with different lower bounds: {floors}"
        (floor,) = floors
        assert name in pins, f"constraints/floor.txt does not pin {name}"
        assert Version(floor) == Version(pins[name]), (
            f"{name}: pyproject.toml says >={floor}, constraints/floor.txt pins {pins[name]}"
        )
    assert set(pins) == FRAMEWORKS | EXTRAS_OF_PSYCOPG


# Pins that hold in one of the two floor environments of scripts/test only: pydantic-evals is
# installed in the evals run's (TETHER_FLOOR=evals), which leaves rich free (pydantic-evals
# needs rich>=13.9.4, above tether's own floor of rich).
ONLY_IN_RUN = {"pydantic-evals": "evals", "rich": "1"}


@pytest.mark.skipif(
    os.environ.get("TETHER_FLOOR") not in ("1", "evals"),
    reason="only in the floor and evals runs of scripts/test",
)
def test_the_floor_run_has_the_floor_installed() -> None:
    run = os.environ["TETHER_FLOOR"]
    for name, pinned in _pins().items():
        if ONLY_IN_RUN.get(name, run) != run:
            continue
        assert version(name) == pinned, f"the floor run has {name} {version(name)}, not {pinned}"


def test_the_main_runs_do_not_install_pydantic_evals() -> None:
    """It pins an older Pydantic AI than the main runs test: installing it there would hold
    Pydantic AI back for the whole suite."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra, requirements in extras.items():
        named = {canonicalize_name(Requirement(text).name) for text in requirements}
        assert extra == "evals" or "pydantic-evals" not in named, extra
    script = (ROOT / "scripts" / "test").read_text()
    assert "python -m pip install -q -e '.[test]'" in script
    assert script.count("evals]") == 1  # the evals run's own environment, .venv-evals
