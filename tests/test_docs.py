"""The documents say what is true: they stand on their own and name only what exists."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_architecture_page_stands_on_its_own() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    for stray in ("../shared", "DESIGN.md", "STYLE notes", "STYLE.md"):
        assert stray not in text, stray
    for target in re.findall(r"\]\(([^)#]+)\)", text):  # relative links point at files
        if "://" not in target:
            assert (ROOT / "docs" / target).exists(), target


def test_pyproject_names_only_extras_and_urls_that_exist() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    project = tomllib.loads(text)["project"]
    extras = set(project["optional-dependencies"])
    assert extras == {"test", "postgres", "ai", "bench"}
    assert "web server" not in text
    assert "example.invalid" not in text
    assert all("example." not in url for url in project.get("urls", {}).values())


def test_the_readme_promises_nothing_stale() -> None:
    text = (ROOT / "README.md").read_text().lower()
    assert "coming next" not in text and "coming soon" not in text
