"""A script tether loads to find a flow (to replay, resume or recover one of its executions,
or in a worker) has its top level run again: the README's first example, saved as a file,
run for real, then replayed by the CLI. Guarded, the replay works; unguarded, tether refuses,
says to add the guard, and no second execution appears."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

import tether
from helpers import run_cli, run_python

ROOT = Path(__file__).resolve().parent.parent
GUARD = 'if __name__ == "__main__":'


def readme_example() -> str:
    """The README's first Python example, its stub bodies filled in (no model is called)."""
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    script = code.group(1)
    script = re.sub(r"\) -> str: \.\.\..*\n", ") -> str:\n    return prompt\n", script)
    script = script.replace("-> list[str]: ...", "-> list[str]:\n    return [query[:10]]")
    assert "..." not in script.replace("# or: await handle", ""), script
    return script


def unguarded(script: str) -> str:
    """The same script with the code under the `__main__` guard moved to the top level."""
    head, _, body = script.partition(GUARD + "\n")
    assert body, "the README's first example starts its execution under the guard"
    return head + textwrap.dedent(body)


def test_the_readme_example_starts_its_execution_under_the_guard() -> None:
    script = readme_example()
    assert GUARD in script
    head, _, _ = script.partition(GUARD)
    assert ".run(" not in head, "nothing starts an execution outside the guard"


def run_script(tmp_path: Path, db_url: str, name: str, source: str) -> tuple[Path, str]:
    """Save `source` as a script and run it for real; returns its path and the execution id."""
    path = tmp_path / name
    path.write_text(source)
    ran = run_python([str(path)], db_url, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "Write a report" in ran.stdout  # the fake model echoes its prompt
    (execution,) = tether.Client(db_url).list()
    return path, execution.id


def test_replaying_a_guarded_script_runs_only_the_replay(
    tmp_path: Path, client: tether.Client, db_url: str
) -> None:
    path, source = run_script(tmp_path, db_url, "agent.py", readme_example())
    replay = ["executions", "replay", source, "--from", "1", "--wait"]
    not_loaded = run_cli(db_url, *replay)
    assert not_loaded.returncode == 2, not_loaded.stdout + not_loaded.stderr
    assert f"add `--script {path}`" in " ".join(not_loaded.stderr.split())
    assert "Write a report" not in not_loaded.stdout, "a stored script path is never run"
    replayed = run_cli(db_url, *replay, "--script", str(path))
    assert replayed.returncode == 0, replayed.stderr
    assert "Write a report" in replayed.stdout
    executions = client.list()
    assert sorted(e.replay_of or "" for e in executions) == ["", source], executions


def test_replaying_an_unguarded_script_says_to_add_the_guard_and_starts_nothing(
    tmp_path: Path, client: tether.Client, db_url: str
) -> None:
    path, source = run_script(tmp_path, db_url, "agent.py", unguarded(readme_example()))
    refused = run_cli(
        db_url, "executions", "replay", source, "--from", "1", "--wait", "--script", str(path)
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = " ".join(refused.stderr.split())
    assert str(path) in message and GUARD in message, message
    assert "research_agent.run(...)" in message and "nothing was started" in message
    assert "Traceback" not in refused.stderr
    assert [e.id for e in client.list()] == [source], "no second, unrelated execution"


def test_a_script_that_swallows_the_refusal_is_refused_all_the_same(
    tmp_path: Path, client: tether.Client, db_url: str
) -> None:
    path, source = run_script(tmp_path, db_url, "agent.py", readme_example())
    # Edited since: its top level now starts an execution and hides any error doing so.
    path.write_text(
        readme_example().replace(
            GUARD + "\n",
            "try:\n    research_agent.run('again')\nexcept Exception:\n    pass\n\n" + GUARD + "\n",
        )
    )
    with pytest.raises(tether.UnguardedScriptError) as refused:
        tether.Worker(db_url, scripts=[str(path)])
    assert refused.value.script == f"the script {path}"
    assert sys.modules.get("__tether_main__") is None, "no half-loaded script is kept"
    assert [e.id for e in client.list()] == [source]


def test_a_worker_refuses_a_module_that_starts_executions_when_imported(
    tmp_path: Path, client: tether.Client, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "eager_agents.py").write_text(unguarded(readme_example()))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(tether.UnguardedScriptError, match="the module eager_agents starts"):
        tether.Worker(db_url, imports=["eager_agents"])
    assert "eager_agents" not in sys.modules
    assert client.list() == []


def test_recover_and_workers_skip_an_unguarded_script_saying_why(
    tmp_path: Path, client: tether.Client, db_url: str
) -> None:
    guarded = readme_example()
    head, _, _ = guarded.partition(GUARD)
    path = tmp_path / "agent.py"
    path.write_text(head + GUARD + '\n    research_agent.enqueue("durable execution")\n')
    assert run_python([str(path)], db_url, cwd=tmp_path).returncode == 0
    (queued,) = client.list()
    path.write_text(unguarded(guarded))  # edited since: now it starts one at its top level
    skipped = run_cli(db_url, "executions", "recover")
    assert skipped.returncode == 1, skipped.stdout + skipped.stderr
    message = " ".join(skipped.stderr.split())
    assert f"skipped 1 execution ({queued.id}): " in message, message
    assert f"add `--script {path}`" in message, message
    assert "Nothing to recover" not in skipped.stdout
    refused = run_cli(db_url, "executions", "recover", "--script", str(path))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert GUARD in refused.stderr and "nothing was started" in " ".join(refused.stderr.split())
    assert tether.Worker(db_url).run_once() == []
    record = client.get(queued.id)
    assert record.status is tether.Status.QUEUED
    assert any(f"--script {path}" in w for w in record.warnings), record.warnings
    assert [e.id for e in client.list()] == [queued.id], "no second, unrelated execution"
