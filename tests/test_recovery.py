"""Recovery completes what it starts; a restarted application adopts its stranded work.

Real processes killed with SIGKILL, real stores. Charges are counted by idempotency key (see
recovery_flows.py): each must be applied exactly once, and no call may run in two processes
at once.
"""

from __future__ import annotations

import random
import signal
import subprocess
import textwrap
from collections import Counter
from pathlib import Path

import pytest

import tether
from helpers import retry_until, run_child, run_cli, spawn_python
from tether import Status

START = textwrap.dedent(
    """
    import sys, recovery_flows
    handle = getattr(recovery_flows, sys.argv[1]).run(int(sys.argv[2]))
    print(handle.id, flush=True)
    print(handle.result(timeout=60), flush=True)
    """
)
TREES = {
    # flow -> (width, its checkpoint commits, the charges it makes)
    "tree": (3, 8, lambda w: {"root.start", "root.end", *(f"g{i}" for i in range(w)),
                              "m.a", "m.b", "m.c"}),
    "sync_tree": (3, 6, lambda w: {"root.start", *(f"g{i}" for i in range(w)), "m.a", "m.b"}),
}  # fmt: skip


def _applied(charges: Path) -> Counter[str]:
    log = charges / "applied.log"
    return Counter(log.read_text().split()) if log.exists() else Counter()


def _overlaps(charges: Path) -> list[str]:
    log = charges / "overlaps.log"
    return log.read_text().splitlines() if log.exists() else []


def _tree(client: tether.Client, root: str) -> list[tether.ExecutionRecord]:
    """The root and all its descendants."""
    found = [client.get(root)]
    for record in found:
        found.extend(client.list(parent=record.id, limit=1000))
    return found


@pytest.mark.parametrize("seed", range(4))
def test_one_recover_finishes_a_tree_killed_at_a_random_point(
    client: tether.Client, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    flow = "tree" if seed % 2 == 0 else "sync_tree"
    width, commits, labels = TREES[flow]
    kill_after = rng.randint(1, commits - 1)
    charges = tmp_path / "charges"
    charges.mkdir()
    crashed = run_child(
        START, client.db, flow, str(width), CHARGES=str(charges), KILL_AFTER_COMMITS=str(kill_after)
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (root,) = [r.id for r in client.list() if r.flow == flow]
    assert not client.get(root).status.finished

    recovered = run_cli(
        client.db, "executions", "recover", "--import", "recovery_flows", CHARGES=str(charges)
    )
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    tree = _tree(client, root)
    assert {r.status for r in tree} == {Status.SUCCEEDED}, [(r.flow, r.status) for r in tree]
    assert _applied(charges) == Counter(labels(width))  # each charge applied exactly once
    assert _overlaps(charges) == []
    # Nothing was left for a second recover.
    again = run_cli(client.db, "executions", "recover", "--import", "recovery_flows")
    assert "Nothing to recover" in again.stdout, again.stdout + again.stderr


def test_recover_says_what_it_leaves_and_why(
    client: tether.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recovered execution that then waits for input is left, with the reason."""
    charges = tmp_path / "charges"
    charges.mkdir()
    monkeypatch.setenv("CHARGES", str(charges))
    crashed = run_child(START, client.db, "ask", "1", KILL_AFTER_COMMITS="1")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (execution,) = client.list()
    import recovery_flows  # noqa: F401 - this process runs the flows it loaded

    recovered = client.recover()
    assert recovered == [execution.id]
    (left,) = recovered.left
    assert (left.execution_id, left.status) == (execution.id, Status.WAITING)
    assert left.reason == "waits for input 'approve'"


def test_the_recover_command_lists_what_it_leaves(client: tether.Client, tmp_path: Path) -> None:
    charges = tmp_path / "charges"
    charges.mkdir()
    crashed = run_child(START, client.db, "ask", "1", KILL_AFTER_COMMITS="1", CHARGES=str(charges))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (execution,) = client.list()
    recovered = run_cli(
        client.db, "executions", "recover", "--import", "recovery_flows", CHARGES=str(charges)
    )
    assert recovered.returncode == 0, recovered.stderr
    assert f"left {execution.id} (waiting): it waits for input 'approve'" in recovered.stderr
    assert client.get(execution.id).status is Status.WAITING


APP = textwrap.dedent(
    """
    import sys, threading, tether, recovery_flows
    tether.launch()  # the application's startup: adopts what its last run left stranded
    if sys.argv[1] == "start":
        ids = [recovery_flows.agent.run(i, 6).id for i in range(4)]
        ids += [recovery_flows.worker_task.run(i, 6).id for i in range(3)]
        print(" ".join(ids), flush=True)
    else:
        print("ready", flush=True)
    threading.Event().wait()
    """
)


def _app_labels() -> Counter[str]:
    labels = [f"agent{n}.{i}" for n in range(4) for i in range(6)]
    labels += [f"agent{n}.child" for n in range(4)]
    labels += [f"task{n}.{i}" for n in range(3) for i in range(6)]
    return Counter(labels)


@pytest.mark.parametrize("restarts", [1, 2])
def test_a_restarted_application_adopts_its_stranded_executions(
    client: tether.Client, tmp_path: Path, restarts: int
) -> None:
    charges = tmp_path / "charges"
    charges.mkdir()
    runs = charges / "runs.log"
    app = spawn_python(["-c", APP, "start"], client.db, CHARGES=str(charges))
    later: list[subprocess.Popen[str]] = []
    try:
        assert app.stdout is not None
        ids = app.stdout.readline().split()
        assert len(ids) == 7
        # Killed mid-run: some steps done, most not.
        retry_until(
            lambda: runs.exists() and len(runs.read_text().splitlines()) >= 10,
            what="the application to run some steps",
        )
        app.send_signal(signal.SIGKILL)
        app.wait(timeout=10)
        assert not all(client.get(i).status.finished for i in ids)

        later = [
            spawn_python(["-c", APP, "restart"], client.db, CHARGES=str(charges))
            for _ in range(restarts)
        ]
        for process in later:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        retry_until(
            lambda: all(client.get(i).status is Status.SUCCEEDED for i in ids),
            timeout=90,
            what="every execution to finish in the restarted application",
        )
        for execution_id in ids:
            for record in _tree(client, execution_id):
                assert record.status is Status.SUCCEEDED, (record.flow, record.status)
        assert _applied(charges) == _app_labels()
        assert _overlaps(charges) == []
    finally:
        for process in [app, *later]:
            if process.poll() is None:
                process.kill()
                process.wait()


SOURCE = textwrap.dedent(
    """
    import tether, approval_flows
    from helpers import retry_until
    client = tether.Client()
    handle = approval_flows.approval_flow.run("x")
    retry_until(lambda: client.get(handle.id).status is tether.Status.WAITING)
    client.input(handle.id, "approve", True)
    print(handle.id, handle.result(timeout=30), flush=True)
    """
)


def test_replay_from_a_wait_with_wait_runs_the_fork_once_input_arrives(
    client: tether.Client, tmp_path: Path
) -> None:
    source = run_child(
        SOURCE,
        client.db,
    )
    assert source.returncode == 0, source.stderr
    source_id = source.stdout.split()[0]
    said = tmp_path / "replay.err"
    with said.open("w") as err_file:
        replay = spawn_python(
            ["-m", "tether", "executions", "replay", source_id, "--from", "wait approve",
             "--wait", "--import", "approval_flows"],
            client.db,
            stderr=err_file.fileno(),
        )  # fmt: skip
    try:
        fork = retry_until(
            lambda: next((r for r in client.list() if r.replay_of == source_id), None),
            what="the fork",
        )
        # Input once the command says it waits on (given sooner, the fork may finish before
        # the command looks, and it has nothing to say).
        retry_until(lambda: "this process runs" in said.read_text(), what="the wait message")
        assert client.get(fork.id).status is Status.WAITING
        given = run_cli(client.db, "executions", "input", fork.id, "--value", "false")
        assert given.returncode == 0, given.stderr
        out, _ = replay.communicate(timeout=60)
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.wait()
    assert replay.returncode == 0, out + said.read_text()
    assert "rejected" in out
    assert client.get(fork.id).status is Status.SUCCEEDED
    assert client.get(fork.id).result == "rejected"


def test_replay_from_a_wait_without_wait_says_a_worker_must_run_it(
    client: tether.Client,
) -> None:
    source = run_child(
        SOURCE,
        client.db,
    )
    assert source.returncode == 0, source.stderr
    replayed = run_cli(
        client.db, "executions", "replay", source.stdout.split()[0], "--from", "wait approve",
        "--import", "approval_flows",
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    assert "a `tether worker` or `tether executions recover` must run it" in replayed.stderr


def test_the_waker_finds_input_behind_more_than_a_thousand_older_runnable_executions(
    client: tether.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recovery_flows

    monkeypatch.setenv("CHARGES", str(tmp_path))
    # Older runnable rows that nobody here runs: queued for workers.
    for _ in range(1100):
        recovery_flows.sync_leaf.enqueue("backlog")
    handle = recovery_flows.ask.run(1)
    retry_until(lambda: client.get(handle.id).status is Status.WAITING, what="the wait")
    # From another process: no in-process poke names it; the waker's scan must find it.
    given = run_cli(client.db, "executions", "input", handle.id, "--value", "true")
    assert given.returncode == 0, given.stderr
    assert handle.result(timeout=30) == "yes"


def test_adoption_is_a_setting_and_launch_needs_an_executor(db_url: str) -> None:
    shown = run_child(
        "import tether\n"
        "from tether._core.config import settings\n"
        "print(settings().adopt)\n"
        "tether.configure(adopt=True)\n"
        "print(settings().adopt)\n",
        db_url,
        TETHER_ADOPT="off",
    )
    assert shown.stdout.split() == ["False", "True"], shown.stderr
    tether.configure(executor=False)
    with pytest.raises(tether.ConfigurationError, match="client-only"):
        tether.launch()
