"""Crash safety with real processes: SIGKILL, resume from another process, leases."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

import agent_flows  # noqa: F401  (this process resumes its flows: it loads them)
import tether
from helpers import child_env, retry_until, run_child, run_python, spawn_child
from tether import Status
from tether._runtime.executor import executor
from tether._runtime.owners import host_prefix

START = textwrap.dedent(
    """
    import agent_flows
    handle = agent_flows.research_agent.run("durability")
    print(handle.id, flush=True)
    print(repr(handle.result(timeout=60)), flush=True)
    """
)
RESUME = textwrap.dedent(
    """
    import sys, tether
    import agent_flows  # a process runs the flows it loaded, never what a row names
    print(repr(tether.Client().resume(sys.argv[1]).result(timeout=60)), flush=True)
    """
)
EXPECTED = "REPORT: durability history #0; durability theory #0; durability practice #0"


def _ran(side_effects: Path) -> Counter[str]:
    if not side_effects.exists():
        return Counter()
    return Counter(line.split()[0] for line in side_effects.read_text().splitlines())


@pytest.mark.parametrize("phase", ["before", "inside", "after"])
@pytest.mark.parametrize("position", range(6))
def test_kill_at_every_checkpoint_boundary_then_resume_elsewhere(
    db_url: str, tmp_path: Path, position: int, phase: str
) -> None:
    side_effects = tmp_path / "effects.log"
    crashed = run_child(
        START, db_url, SIDE_EFFECTS=str(side_effects), CRASH_AT=str(position), CRASH_PHASE=phase
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    # The child may die before it prints the id, so take it from the store.
    (execution,) = tether.Client().list()
    execution_id = execution.id
    before = _ran(side_effects)

    resumed = run_child(RESUME, db_url, execution_id, SIDE_EFFECTS=str(side_effects))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == repr(EXPECTED)

    ran = _ran(side_effects)
    assert set(ran) == {str(pos) for pos in range(6)}, ran
    for pos in map(str, range(6)):
        if int(pos) < position or (pos == str(position) and phase == "after"):
            assert ran[pos] == 1, f"committed checkpoint {pos} ran again: {ran}"
        elif pos == str(position) and phase == "inside":
            assert before[pos] == 1 and ran[pos] == 2, "the in-flight call runs once more"
        else:
            assert ran[pos] == 1, f"checkpoint {pos} should have run once: {ran}"
    record = tether.Client().get(execution_id)
    assert record.status is Status.SUCCEEDED
    assert record.attempt == 2
    assert [c.position for c in record.checkpoints] == [str(p) for p in range(6)]


def test_resume_is_refused_while_the_owner_lives(db_url: str, tmp_path: Path) -> None:
    release = tmp_path / "release.txt"
    side_effects = tmp_path / "effects.log"
    code = textwrap.dedent(
        f"""
        import agent_flows
        handle = agent_flows.blocking_flow.run({str(release)!r})
        print(handle.id, flush=True)
        print(handle.result(timeout=60), flush=True)
        """
    )
    child = spawn_child(code, db_url, SIDE_EFFECTS=str(side_effects))
    try:
        assert child.stdout is not None
        execution_id = child.stdout.readline().strip()
        client = tether.Client()
        retry_until(lambda: side_effects.exists(), what="the child to enter the checkpoint")
        with pytest.raises(tether.ExecutionLocked, match="held by the live process"):
            client.resume(execution_id)
        assert client.recover() == []
        assert client.get(execution_id).status is Status.RUNNING

        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        release.write_text("done")
        assert client.resume(execution_id).result(timeout=30) == "DONE"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_recover_resumes_every_execution_of_a_killed_process(db_url: str, tmp_path: Path) -> None:
    release = tmp_path / "release.txt"
    code = textwrap.dedent(
        f"""
        import agent_flows
        ids = [agent_flows.blocking_flow.run({str(release)!r}).id for _ in range(3)]
        print(" ".join(ids), flush=True)
        import time
        time.sleep(60)
        """
    )
    side_effects = tmp_path / "effects.log"
    child = spawn_child(code, db_url, SIDE_EFFECTS=str(side_effects))
    assert child.stdout is not None
    ids = child.stdout.readline().split()
    retry_until(
        lambda: len(_ran(side_effects)) == 1 and sum(_ran(side_effects).values()) == 3,
        what="three executions in their first checkpoint",
    )
    child.kill()
    child.wait(timeout=10)
    release.write_text("ok")
    client = tether.Client()
    assert sorted(client.recover()) == sorted(ids)
    for execution_id in ids:
        assert client.handle(execution_id).result(timeout=30) == "OK"
    assert client.recover() == []


def test_two_processes_run_executions_on_one_sqlite_file(db_url: str) -> None:
    code = textwrap.dedent(
        """
        import agent_flows, json
        handles = [agent_flows.many_ticks.run(50) for _ in range(20)]
        print(json.dumps([h.result(timeout=120) for h in handles]), flush=True)
        """
    )
    children = [spawn_child(code, db_url, stderr=subprocess.PIPE) for _ in range(2)]
    for child in children:
        out, err = child.communicate(timeout=180)
        assert child.returncode == 0, err
        assert "database is locked" not in err
        assert json.loads(out) == [sum(range(50))] * 20
    records = tether.Client().list(limit=100)
    assert len(records) == 40
    assert all(r.status is Status.SUCCEEDED for r in records)
    assert all(len(tether.Client().get(r.id).checkpoints) == 50 for r in records[:5])


def test_cancel_from_another_process_stops_a_running_execution(db_url: str, tmp_path: Path) -> None:
    release = tmp_path / "release.txt"
    side_effects = tmp_path / "effects.log"
    code = textwrap.dedent(
        f"""
        import agent_flows, tether
        handle = agent_flows.blocking_flow.run({str(release)!r})
        print(handle.id, flush=True)
        try:
            handle.result(timeout=60)
        except tether.ExecutionCancelled:
            print("cancelled", flush=True)
        """
    )
    child = spawn_child(code, db_url, SIDE_EFFECTS=str(side_effects))
    assert child.stdout is not None
    execution_id = child.stdout.readline().strip()
    retry_until(lambda: side_effects.exists(), what="the child to enter the checkpoint")
    client = tether.Client()
    assert client.cancel(execution_id) is Status.RUNNING
    # The running process learns of the request through its lease heartbeat.
    retry_until(lambda: client.get(execution_id).cancel_requested, what="the cancel flag")
    release.write_text("go")
    out, _ = child.communicate(timeout=30)
    assert out.strip().endswith("cancelled")
    record = client.get(execution_id)
    assert record.status is Status.CANCELLED
    assert [c.name for c in record.checkpoints] == ["wait_for_file"]
    assert _ran(side_effects) == Counter({"0": 1})


SCRIPT = textwrap.dedent(
    """
    import dataclasses, os, signal, sys
    import tether

    @dataclasses.dataclass
    class Note:
        text: str

    @tether.checkpoint
    def first(topic: str) -> Note:
        return Note(f"notes on {topic}")

    @tether.checkpoint
    def second(note: Note) -> str:
        if os.environ.get("CRASH") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return note.text.upper()

    @tether.flow
    def script_agent(topic: str) -> tuple[Note, str]:
        note = first(topic)
        return note, second(note)

    if __name__ == "__main__":
        handle = script_agent.run(sys.argv[1])
        print(handle.id, flush=True)
        print(handle.result(timeout=30), flush=True)
    """
)


def _crash_script(db_url: str, script: Path, topic: str) -> str:
    """Run SCRIPT as `script` until it SIGKILLs itself in its second step; the execution's id."""
    script.write_text(SCRIPT)
    crashed = run_python([str(script), topic], db_url, cwd=script.parent, CRASH="1")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (execution,) = tether.Client().list()
    return execution.id


def test_flow_defined_in_a_script_resumes_from_another_process(db_url: str, tmp_path: Path) -> None:
    script = tmp_path / "my_agent.py"
    execution_id = _crash_script(db_url, script, "tides")
    resumed = run_python(
        ["-m", "tether", "executions", "resume", execution_id, "--script", str(script), "--wait"],
        db_url,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "NOTES ON TIDES" in resumed.stdout
    record = tether.Client().get(execution_id)
    assert record.status is Status.SUCCEEDED
    assert record.attempt == 2


def test_resume_of_a_flow_that_cannot_be_imported_changes_nothing(
    db_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "gone.py"
    execution_id = _crash_script(db_url, script, "x")
    os.remove(script)
    client = tether.Client()
    before = client.get(execution_id)
    with pytest.raises(tether.FlowNotFoundError, match="is not loaded; add `--script ") as refused:
        client.resume(execution_id)
    assert refused.value.load_with == f"--script {script}"
    after = client.get(execution_id)
    assert (after.status, after.owner, after.attempt) == (
        before.status,
        before.owner,
        before.attempt,
    )
    recovered = client.recover()
    assert recovered == []
    assert [(s.execution_id, s.load_with) for s in recovered.skipped] == [
        (execution_id, f"--script {script}")
    ]
    assert any("recover skipped it" in w for w in client.get(execution_id).warnings)


@pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0,
    reason="needs util-linux's unshare and root, to start a process in a PID namespace",
)
def test_a_process_in_another_pid_namespace_is_never_taken_for_a_dead_pid_here(
    db_url: str, client: tether.Client, tmp_path: Path
) -> None:
    """Containers that share a hostname (`hostNetwork: true` pods) each count pids from 1:
    a pid recorded by one means nothing to the other, so its executions are left to their
    leases, never taken over as a dead process of this host."""
    import cli_flows

    gate = tmp_path / "gate"
    queued = cli_flows.gated.enqueue(str(gate))
    argv = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "tether"]
    argv += ["executions", "resume", queued.id, "--wait", "--import", "cli_flows"]
    holder = subprocess.Popen(argv, env=child_env(db_url), stdout=subprocess.DEVNULL)
    try:
        row = retry_until(
            lambda: (r := client._store.get_execution(queued.id)) and r.owner and r,
            what="the process in its own PID namespace to hold the execution",
        )
        assert row.owner is not None and not row.owner.startswith(host_prefix())
        now = time.time()
        assert queued.id not in [
            r.id for r in client._store.leased_on_host(prefix=host_prefix(), now=now)
        ]
        assert not executor().owner_gone(row.owner, row.lease_expires, now)
        gate.touch()
        assert queued.result(timeout=60) == "through"
    finally:
        gate.touch()
        holder.wait(timeout=60)
