"""`tether launcher --backend process` and its runners (`tether worker --execution ID
--exit-when-idle`): real launcher and runner processes on a real store, killed with SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import launcher_flows
import tether
from helpers import TESTS, ProcessPool, child_env, retry_until, run_child, run_cli
from tether import Status
from tether._runtime.launcher import runner_name


class Launchers(ProcessPool):
    """Launcher processes of one test, on one state directory; at teardown they and every
    runner still alive are SIGKILLed, whatever happened."""

    def __init__(self, db_url: str, tmp: Path) -> None:
        super().__init__()
        self.db_url = db_url
        self.state = tmp / "state"
        self.effects = tmp / "effects.log"
        self.gates = tmp / "gates"
        self.gates.mkdir()
        self.logs = tmp / "logs"
        self.logs.mkdir()

    def start(self, *extra: str, **env: str) -> subprocess.Popen[str]:
        argv = [
            "-m", "tether", "launcher", "--backend", "process", "--import", "launcher_flows",
            "--state-dir", str(self.state), "--poll", "0.02", *extra,
        ]  # fmt: skip
        log = self.logs / f"launcher-{len(self.procs)}.log"
        # Output to a file, not a pipe: runners inherit it, and outlive a killed launcher.
        with log.open("w") as sink:
            proc = subprocess.Popen(
                [sys.executable, *argv], stdout=sink, stderr=subprocess.STDOUT, text=True,
                cwd=str(TESTS), env=child_env(
                    self.db_url, SIDE_EFFECTS=str(self.effects), GATE_DIR=str(self.gates), **env
                ),
            )  # fmt: skip
        return self.add(proc)

    def log(self, index: int) -> str:
        return (self.logs / f"launcher-{index}.log").read_text()

    def open_gate(self, name: str | int) -> None:
        (self.gates / str(name)).touch()

    def runners(self) -> dict[str, int]:
        """The runners alive now, by the lock each holds: name -> pid."""
        import fcntl

        alive = {}
        for path in self.state.glob("*.lock"):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                words = path.read_text().split()
                alive[path.stem] = int(words[1]) if len(words) > 1 else 0
            finally:
                os.close(fd)
        return alive

    def effects_lines(self) -> list[tuple[str, str, str, int, float]]:
        if not self.effects.exists():
            return []
        rows = []
        for line in self.effects.read_text().splitlines():
            execution, position, label, pid, at = line.split()
            rows.append((execution, position, label, int(pid), float(at)))
        return rows

    def ran(self) -> Counter[str]:
        return Counter(label for _, _, label, _, _ in self.effects_lines())

    def kill_all(self) -> None:
        super().kill_all()
        for pid in self.runners().values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def launchers(db_url: str, tmp_path: Path) -> Iterator[Launchers]:
    tether.configure(executor=False)  # this process only enqueues and gives input
    pool = Launchers(db_url, tmp_path)
    yield pool
    pool.kill_all()


def finished(client: tether.Client, ids: list[str]) -> bool:
    return all(Status(client.get(i).status).finished for i in ids)


def test_runs_queued_agents_with_at_most_max_running_runners(
    launchers: Launchers, client: tether.Client
) -> None:
    handles = [launcher_flows.gathered.enqueue(f"t{i}") for i in range(3)]
    handles += [launcher_flows.parent.enqueue(f"p{i}") for i in range(2)]
    launchers.start("--max-running", "2")
    ids = [h.id for h in handles]
    peak = 0

    def done() -> bool:
        nonlocal peak
        peak = max(peak, len(launchers.runners()))
        return finished(client, ids)

    retry_until(done, timeout=90, what="every execution to finish")
    assert peak <= 2
    for i in range(3):
        assert client.get(ids[i]).result == [
            f"notes-on-notes-on-t{i}-a-summary",
            f"notes-on-notes-on-t{i}-b-summary",
        ]
    for i in range(2):
        assert client.get(ids[3 + i]).result == f"parent-p{i} + child-p{i}"
    # Every checkpoint ran once, and never more than two runner processes ran checkpoints
    # at one moment (a runner's checkpoints lie within its life).
    assert set(launchers.ran().values()) == {1}
    spans: dict[int, list[float]] = {}
    for _, _, _, pid, at in launchers.effects_lines():
        span = spans.setdefault(pid, [at, at])
        span[0], span[1] = min(span[0], at), max(span[1], at)
    moments = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()])
    running = most = 0
    for _, delta in moments:
        running += delta
        most = max(most, running)
    assert most <= 2
    # Each execution's root was claimed by its own runner: one attempt each.
    assert all(client.get(i).attempt == 1 for i in ids[:3])


def test_a_waiting_execution_holds_no_runner_until_its_input_arrives(
    launchers: Launchers, client: tether.Client
) -> None:
    handle = launcher_flows.approval.enqueue("memo")
    launchers.start()
    retry_until(
        lambda: client.get(handle.id).status == Status.WAITING and not launchers.runners(),
        timeout=60,
        what="the execution to wait with no runner alive",
    )
    first = client.get(handle.id).attempt
    client.input(handle.id, "approve", True)
    retry_until(lambda: finished(client, [handle.id]), timeout=60, what="it to finish")
    record = client.get(handle.id)
    assert record.status == Status.SUCCEEDED and record.result == "publish-memo"
    assert record.attempt == first + 1  # a new runner, a new attempt
    assert launchers.ran() == Counter({"draft-memo": 1, "publish-memo": 1})
    launched = [line for line in launchers.log(0).splitlines() if "launched " in line]
    assert len(launched) == 2, launched


def test_a_sleeping_execution_holds_no_runner_until_its_timer_is_due(
    launchers: Launchers, client: tether.Client
) -> None:
    handle = launcher_flows.napper.enqueue(4.0)
    launchers.start()
    # The runner exits at the sleep (within a loop turn, far less than the 4 s), and the
    # launcher starts a new one when the timer falls due.
    retry_until(lambda: launchers.ran()["before-nap"], timeout=60, what="the first step")
    retry_until(lambda: finished(client, [handle.id]), timeout=60, what="it to finish")
    record = client.get(handle.id)
    assert record.result == "before-nap then after-nap"
    assert record.attempt == 2
    assert launchers.ran() == Counter({"before-nap": 1, "after-nap": 1})
    pids = {label: pid for _, _, label, pid, _ in launchers.effects_lines()}
    assert pids["before-nap"] != pids["after-nap"]  # the first runner had exited


def test_a_runner_killed_mid_checkpoint_is_replaced_by_a_new_attempt(
    launchers: Launchers, client: tether.Client
) -> None:
    handle = launcher_flows.gated.enqueue(3)
    launchers.start(TETHER_LEASE_SECONDS="2")
    launchers.open_gate(0)
    retry_until(lambda: launchers.ran()["gated-1"], timeout=60, what="step 1 to start")
    (victim,) = {pid for _, _, label, pid, _ in launchers.effects_lines() if label == "gated-1"}
    os.kill(victim, signal.SIGKILL)
    for gate in (1, 2):
        launchers.open_gate(gate)
    retry_until(lambda: finished(client, [handle.id]), timeout=60, what="a new attempt")
    record = client.get(handle.id)
    assert record.status == Status.SUCCEEDED
    assert record.result == ["gated-0", "gated-1", "gated-2"]
    # Step 0 was committed before the kill and did not run again; step 1 was in flight.
    assert launchers.ran() == Counter({"gated-0": 1, "gated-1": 2, "gated-2": 1})
    assert record.attempt == 2
    pids = {pid for _, _, label, pid, _ in launchers.effects_lines() if label == "gated-2"}
    assert victim not in pids


def test_a_restarted_launcher_launches_no_second_runner(
    launchers: Launchers, client: tether.Client, tmp_path: Path
) -> None:
    gate = tmp_path / "import-gate"
    handles = [launcher_flows.gated.enqueue(1) for _ in range(2)]
    first = launchers.start("--max-running", "4", IMPORT_GATE=str(gate))
    names = {runner_name(h.id, 1) for h in handles}
    # Both runners started, and have claimed nothing yet (held at their import).
    retry_until(lambda: set(launchers.runners()) == names, timeout=60, what="two runners")
    first.kill()
    first.communicate(timeout=10)
    assert all(client.get(h.id).status == Status.QUEUED for h in handles)
    third = launcher_flows.gated.enqueue(1)
    launchers.start("--max-running", "4", IMPORT_GATE=str(gate))
    # The new launcher's look at the store reached the third execution (after the other
    # two, which are older), so it passed over theirs.
    wanted = runner_name(third.id, 1)
    retry_until(lambda: wanted in launchers.log(1), timeout=60, what="the third runner")
    assert set(launchers.runners()) == {*names, wanted}
    launched = [line for line in launchers.log(1).splitlines() if "launched " in line]
    assert len(launched) == 1 and wanted in launched[0], launched
    # Restarted again while the three run (each inside its checkpoint): a fourth execution
    # shows the new launcher has looked, and it launched nothing else.
    gate.touch()
    retry_until(lambda: launchers.ran()["gated-0"] == 3, timeout=60, what="three running")
    launchers.procs[1].kill()
    launchers.procs[1].communicate(timeout=10)
    fourth = launcher_flows.gated.enqueue(1)
    launchers.start("--max-running", "4")
    last = runner_name(fourth.id, 1)
    retry_until(lambda: last in launchers.log(2), timeout=60, what="the fourth runner")
    launched = [line for line in launchers.log(2).splitlines() if "launched " in line]
    assert len(launched) == 1 and last in launched[0], launched
    launchers.open_gate(0)
    ids = [h.id for h in [*handles, third, fourth]]
    retry_until(lambda: finished(client, ids), timeout=60, what="all four to finish")
    assert all(client.get(i).status == Status.SUCCEEDED for i in ids)
    assert all(client.get(i).attempt == 1 for i in ids)
    assert launchers.ran() == Counter({"gated-0": 4})


# --- the runner: tether worker --execution ID --exit-when-idle -------------------------------


def test_a_runner_of_an_unknown_execution_exits_not_found(
    db_url: str, client: tether.Client
) -> None:
    assert client.list() == []  # the store exists; the execution does not
    done = run_cli(
        db_url, "worker", "--execution", "nope", "--exit-when-idle", "--import", "launcher_flows"
    )
    assert done.returncode == 3, done.stderr
    assert "no execution nope" in done.stderr


def test_a_runner_of_a_finished_execution_is_refused(db_url: str, client: tether.Client) -> None:
    handle = launcher_flows.parent.run("x")
    assert handle.result(timeout=30) == "parent-x + child-x"
    done = run_cli(
        db_url, "worker", "--execution", handle.id, "--exit-when-idle", "--import",
        "launcher_flows",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"execution {handle.id} already succeeded" in done.stderr


def test_a_runner_is_refused_while_a_live_runner_holds_the_execution(
    launchers: Launchers, client: tether.Client
) -> None:
    handle = launcher_flows.gated.enqueue(1)
    launchers.start()
    retry_until(lambda: launchers.ran()["gated-0"], timeout=60, what="the step to start")
    done = run_cli(
        launchers.db_url, "worker", "--execution", handle.id, "--exit-when-idle",
        "--import", "launcher_flows",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "is held by" in done.stderr
    launchers.open_gate(0)
    retry_until(lambda: finished(client, [handle.id]), timeout=60, what="it to finish")
    assert launchers.ran() == Counter({"gated-0": 1})


def test_a_runner_of_a_flow_it_did_not_load_says_which_flag(
    db_url: str, client: tether.Client
) -> None:
    tether.configure(executor=False)
    handle = launcher_flows.gated.enqueue(1)
    done = run_cli(db_url, "worker", "--execution", handle.id, "--exit-when-idle")
    assert done.returncode == 2, done.stderr
    assert "--import launcher_flows" in done.stderr
    assert client.get(handle.id).status == Status.QUEUED


def test_a_worker_that_exits_when_idle_runs_everything_runnable_then_exits(
    db_url: str, client: tether.Client
) -> None:
    tether.configure(executor=False)
    handles = [launcher_flows.parent.enqueue(f"w{i}") for i in range(3)]
    done = run_cli(db_url, "worker", "--exit-when-idle", "--import", "launcher_flows")
    assert done.returncode == 0, done.stderr
    assert [client.get(h.id).result for h in handles] == [
        f"parent-w{i} + child-w{i}" for i in range(3)
    ]


def test_a_runner_that_cannot_run_its_execution_is_started_again_after_a_pause(
    launchers: Launchers, client: tether.Client
) -> None:
    import approval_flows

    # The launcher's runners load launcher_flows only: this flow's runner exits at once.
    handle = approval_flows.approval_flow.enqueue("x")
    launchers.start()
    name = runner_name(handle.id, 1)
    retry_until(
        lambda: f"runner {name} ended without running execution" in launchers.log(0),
        timeout=60,
        what="a second try",
    )
    log = launchers.log(0)
    assert f"runner {name} exited with code 2" in log
    assert "--import approval_flows" in log  # the runner's own error, in the launcher's output
    record = client.get(handle.id)
    assert record.status == Status.QUEUED and record.attempt == 0


def test_runners_take_their_lease_from_the_environment(db_url: str) -> None:
    code = "from tether._core.config import settings; print(settings().lease_seconds)"
    assert run_child(code, db_url, TETHER_LEASE_SECONDS="2.5").stdout.strip() == "2.5"
    refused = run_child(code, db_url, TETHER_LEASE_SECONDS="0")
    assert "TETHER_LEASE_SECONDS must be at least 0.1" in refused.stderr


def test_a_launcher_serves_only_its_queues(launchers: Launchers, client: tether.Client) -> None:
    other = launcher_flows.parent.options(queue="other").enqueue("o")
    mine = launcher_flows.parent.options(queue="mine").enqueue("m")
    launchers.start("--queue", "mine")
    retry_until(lambda: finished(client, [mine.id]), timeout=60, what="its queue's execution")
    # The launcher's loop reached the other execution (older) before this one, and left it.
    assert client.get(other.id).status == Status.QUEUED
    assert runner_name(other.id, 1) not in launchers.log(0)


def test_a_launcher_refuses_a_store_that_does_not_exist(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'tether.db'}"
    done = run_cli(missing, "launcher", COLUMNS="300")
    assert done.returncode == 2, done.stderr
    assert "no tether database at" in done.stderr


def test_a_runner_cannot_also_dispatch_to_ray(db_url: str) -> None:
    with pytest.raises(tether.UsageError, match=r"either execution= .* or ray="):
        tether.Worker(execution="some-id", ray="auto")
