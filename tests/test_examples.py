"""The examples, run as a newcomer runs them: in a fresh directory, with their scripted
models, an answer on stdin or from the CLI, and a process environment in which Pydantic AI
would show its first-run banner (no pytest or CI variables, a coding agent announced)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

import tether
from helpers import SRC, retry_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BANNER = "pydantic-ai v"


def example_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_VERSION", "CI", "TETHER_DB")}
    env.pop("PYDANTIC_AI_NO_BANNER", None)
    env.update(AI_AGENT="1", PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1", COLUMNS="200")
    env.pop("TETHER_MODEL", None)
    return env


def run_example(
    cwd: Path, *argv: str, stdin: str = "", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=example_env(),
    )


def assert_clean(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stdout + out.stderr
    assert BANNER not in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_the_banner_would_show_in_this_environment(tmp_path: Path) -> None:
    """The control: a bare agent run in the same environment does print the banner, so the
    examples' clean output below is their own doing."""
    code = (
        "from pydantic_ai import Agent\n"
        "from pydantic_ai.models.test import TestModel\n"
        "Agent(TestModel()).run_sync('hi')\n"
    )
    out = run_example(tmp_path, "-c", code)
    assert out.returncode == 0, out.stderr
    assert BANNER in out.stderr


def test_research_agent_takes_the_answer_from_stdin(tmp_path: Path) -> None:
    out = run_example(tmp_path, str(EXAMPLES / "research_agent.py"), "tides", stdin="y\n")
    assert_clean(out)
    assert "Approve? [y/n]" in out.stdout and "-> approved" in out.stdout
    assert "Result: Done: published" in out.stdout


def test_research_agent_carries_on_when_the_cli_answers_first(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / '.tether' / 'tether.db'}"
    script = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "research_agent.py"), "tides"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=example_env(),
    )
    try:
        client = retry_until(
            lambda: (tmp_path / ".tether" / "tether.db").exists() and tether.Client(url),
            timeout=60,
            what="the example's store",
        )
        retry_until(lambda: client.pending_waits(), timeout=60, what="the approval wait")
        (execution,) = client.list()
        given = subprocess.run(
            [sys.executable, "-m", "tether", "executions", "input", execution.id, "--value",
             "true"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=example_env(),
        )  # fmt: skip
        assert given.returncode == 0, given.stderr
        # The prompt is still open; a late answer on stdin must not crash the script either.
        stdout, stderr = script.communicate(input="y\n", timeout=120)
    finally:
        if script.poll() is None:
            script.kill()
    assert_clean(subprocess.CompletedProcess(script.args, script.returncode, stdout, stderr))
    assert "answered elsewhere" in stdout
    assert "Result: Done: published" in stdout


def test_chat_memory_remembers_across_runs(tmp_path: Path) -> None:
    first = run_example(tmp_path, str(EXAMPLES / "chat_memory.py"), "alice", "hello")
    assert_clean(first)
    assert "(turn 1) I remember 0 earlier messages." in first.stdout
    second = run_example(tmp_path, str(EXAMPLES / "chat_memory.py"), "alice", "again")
    assert_clean(second)
    assert "(turn 2)" in second.stdout


@pytest.mark.parametrize("example", ["research_agent.py", "chat_memory.py"])
def test_without_the_ai_extra_the_examples_say_what_to_install(
    tmp_path: Path, example: str
) -> None:
    code = (
        "import runpy, sys\n"
        "sys.modules['pydantic_ai'] = None  # as if Pydantic AI were not installed\n"
        "sys.argv = [sys.argv[1], 'x', 'y']\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    out = run_example(tmp_path, "-c", code, str(EXAMPLES / example))
    assert out.returncode == 1
    hint = "This example needs Pydantic AI, the `ai` extra: pip install -e '.[ai]'"
    assert out.stderr.strip() == hint


# --- the banner on a terminal ---------------------------------------------------------------------

DURABLE_SCRIPT = """\
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

import tether
from tether.ai import durable

agent = durable(Agent(TestModel(custom_output_text="fine")))


@tether.flow
async def ask(question: str) -> str:
    return (await agent.run(question)).output


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "flow":
        print("answer:", ask.run("how are you?").result(timeout=60))
    else:
        print("answer:", agent.run_sync("how are you?").output)
"""


def run_on_a_terminal(cwd: Path, *argv: str, timeout: float = 120) -> tuple[int, str]:
    """Run Python with stdin, stdout and stderr on a pseudo-terminal, as a person runs a
    script, and return its exit code and everything it wrote."""
    env = example_env()
    env.pop("AI_AGENT")  # the terminal alone is what would show the banner
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, *argv], stdin=follower, stdout=follower, stderr=follower, cwd=cwd, env=env
    )
    os.close(follower)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], timeout)
            if not ready:
                raise AssertionError(f"no output for {timeout}s: {b''.join(chunks)!r}")
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the process closed its end of the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    return code, b"".join(chunks).decode(errors="replace")


def test_on_a_terminal_a_plain_agent_shows_the_banner(tmp_path: Path) -> None:
    """The control for the test below: the terminal alone brings the banner out."""
    code = "from pydantic_ai import Agent\nfrom pydantic_ai.models.test import TestModel\n"
    code += "print('answer:', Agent(TestModel()).run_sync('hi').output)\n"
    status, output = run_on_a_terminal(tmp_path, "-c", code)
    assert status == 0, output
    assert BANNER in output and "answer:" in output


@pytest.mark.parametrize("where", ["flow", "outside"])
def test_a_durable_agent_of_ones_own_shows_no_banner_on_a_terminal(
    tmp_path: Path, where: str
) -> None:
    script = tmp_path / "my_agent.py"
    script.write_text(DURABLE_SCRIPT)
    status, output = run_on_a_terminal(tmp_path, str(script), where)
    assert status == 0, output
    assert "answer: fine" in output, output
    assert BANNER not in output and "Traceback" not in output, output
