"""The documents say what is true: they stand on their own and name only what exists."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import tether
from helpers import retry_until, run_python, spawn_python

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
    assert extras == {"test", "postgres", "ai", "bench", "server", "mcp", "kubernetes", "ray"}
    assert "web server" not in text
    assert "example.invalid" not in text
    assert all("example." not in url for url in project.get("urls", {}).values())


def test_the_readme_promises_nothing_stale() -> None:
    text = (ROOT / "README.md").read_text().lower()
    assert "coming next" not in text and "coming soon" not in text


# --- the README's install lines and its agent snippets ----------------------------------------

README = ROOT / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_readme_installs_from_a_clone_and_names_the_provider_extra() -> None:
    """tether is not on PyPI yet: every install line works in a clone (`pip install -e`),
    and the agent examples' `"openai:gpt-4o"` names the client it needs."""
    text = README.read_text()
    assert "not on PyPI yet" in text
    commands = re.findall(r"pip install [^`\n#]*", text)
    assert commands
    for command in commands:
        assert command.startswith("pip install -e ") or "pydantic-ai-slim[" in command, command
    assert "pip install 'pydantic-ai-slim[openai]'" in text
    for source in [*(ROOT / "src").rglob("*.py"), *(ROOT / "examples").rglob("*.py")]:
        assert "tether[" not in source.read_text(), f"{source}: pip install 'tether[...]'"


# What a reader supplies to the README's agent snippets: their tools, and a model that costs
# nothing in place of "openai:gpt-4o" (the snippets import everything else themselves).
SNIPPET_PRELUDE = """\
from pydantic_ai import Tool
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.messages import ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel


def search(query: str) -> list[str]:
    return ["https://tides.example/a"]


def fetch(url: str) -> str:
    return f"the page at {url}"


def _delete_file(path: str) -> str:
    return f"deleted {path}"


delete_file = Tool(_delete_file, name="delete_file", requires_approval=True)


def _model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    returns = [p.content for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
    if returns:
        return ModelResponse(parts=[TextPart(" | ".join(map(str, returns)))])
    tool = info.function_tools[0].name
    args = {"query": "tides"} if tool == "search" else {"path": "/tmp/old.csv"}
    return ModelResponse(parts=[ToolCallPart(tool, args)])


MODEL = FunctionModel(_model)
"""


def _readme_snippet(marker: str) -> str:
    (block,) = [b for b in _python_blocks(README.read_text()) if marker in b]
    assert '"openai:gpt-4o"' in block
    return block.replace('"openai:gpt-4o"', "MODEL")


def _script(tmp_path: Path, marker: str, main: str) -> Path:
    path = tmp_path / "readme_agent.py"
    snippet = _readme_snippet(marker)
    path.write_text(f'{SNIPPET_PRELUDE}\n{snippet}\n\nif __name__ == "__main__":\n{main}')
    return path


def test_the_readmes_durable_agent_snippet_runs(tmp_path: Path, db_url: str) -> None:
    script = _script(
        tmp_path,
        "tools=[search, fetch]",
        "    print(research.run('tides').result(timeout=60))\n",
    )
    out = run_python([str(script)], db_url, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "['https://tides.example/a']"


def test_the_readmes_continuation_snippet_runs_with_its_own_imports(
    tmp_path: Path, db_url: str
) -> None:
    script = _script(
        tmp_path,
        "async def clean_up(",
        "    print(clean_up.run('/tmp').result(timeout=120))\n",
    )
    running = spawn_python([str(script)], db_url, stderr=subprocess.PIPE)
    try:
        client = tether.Client(db_url)
        (wait,) = retry_until(lambda: client.pending_waits(), timeout=60, what="the approval")
        assert wait.name.startswith("approve:") and wait.question == {"path": "/tmp/old.csv"}
        client.input(wait.execution_id, wait.name, True)
        stdout, stderr = running.communicate(timeout=120)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == 0, stdout + stderr
    assert stdout.strip() == "deleted /tmp/old.csv"
