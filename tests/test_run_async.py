"""`await flow.run_async(...)`: a start for callers on an event loop, durable when the await
returns, group committed with the starts made concurrently; in flow code a child flow."""

from __future__ import annotations

import asyncio
import signal
import textwrap
import threading
from collections import Counter
from pathlib import Path

import pytest

import run_async_flows as flows
import tether
from helpers import recover_until_finished, retry_until, run_child, spawn_child
from tether import Status
from tether._core.config import store_for
from tether.store import _sql_executions

# Resume everything runnable until the execution has finished (the process that held it is
# dead), then print its result.
RECOVER = recover_until_finished("run_async_flows")


def _resume(client: tether.Client, execution_id: str, **env: str) -> str:
    resumed = run_child(RECOVER, client.db, execution_id, **env)
    assert resumed.returncode == 0, resumed.stderr
    return resumed.stdout.strip()


def test_the_execution_is_durable_when_the_await_returns(
    client: tether.Client, tmp_path: Path
) -> None:
    # The starter kills itself the moment the await returns: whatever the execution had
    # done by then, its row must be in the store, and another process finishes it.
    code = textwrap.dedent(
        """
        import asyncio, os, signal, run_async_flows
        async def main():
            handle = await run_async_flows.agent.run_async(1)
            print(handle.id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        asyncio.run(main())
        """
    )
    crashed = run_child(code, client.db)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    execution_id = crashed.stdout.strip()
    record = client.get(execution_id)  # read from this process: committed, not just sent
    assert record.flow == "agent"
    assert _resume(client, execution_id) == "30"
    assert client.get(execution_id).status is Status.SUCCEEDED


def test_gathered_starts_all_finish_and_share_commits(db_url: str) -> None:
    async def main() -> list[int]:
        handles = await asyncio.gather(*(flows.agent.run_async(i) for i in range(200)))
        assert len({h.id for h in handles}) == 200
        return list(await asyncio.gather(*handles))

    store = store_for()
    assert asyncio.run(main()) == [(i + i + 1) * 10 for i in range(200)]
    starts = store._starts  # type: ignore[attr-defined]
    assert starts is not None and 1 <= starts.batches < 200
    assert len(tether.Client(db_url).list(limit=500)) == 200


def test_runs_started_by_threads_while_another_is_written_share_one_commit(db_url: str) -> None:
    # Held at SQLite's write lock here: a first start writes on its own (and waits), a second
    # leads the group commit of starts (and waits), six more queue behind it. Let go, the six
    # are written in one transaction, and every start returns a durable execution that runs.
    if not db_url.startswith("sqlite"):
        pytest.skip("holds the SQLite store's write lock")
    assert flows.agent.run(0).result() == 10  # the store exists
    store = store_for()
    starts = store._start_group()  # type: ignore[attr-defined]
    handles: dict[int, tether.Handle[int]] = {}

    def start(i: int) -> threading.Thread:
        thread = threading.Thread(target=lambda: handles.__setitem__(i, flows.agent.run(i)))
        thread.start()
        return thread

    with store._writing:  # type: ignore[attr-defined]
        threads = [start(1)]
        retry_until(_sql_executions._ALONE.locked, what="a start written on its own")
        before = starts.batches
        threads.append(start(2))
        # Counted once its leader took it out of the queue: whoever comes now waits.
        retry_until(lambda: starts.batches == before + 1, what="a start leading the group")
        threads += [start(i) for i in range(3, 9)]
        retry_until(lambda: len(starts._queue) + len(starts._inbox) == 6, what="six queued")
    for thread in threads:
        thread.join()
    assert starts.batches == before + 2  # the leader's, then the six together
    assert sorted(handles) == list(range(1, 9))
    assert [handles[i].result() for i in range(1, 9)] == [(i + i + 1) * 10 for i in range(1, 9)]


def test_a_loop_of_run_on_one_thread_is_durable_the_moment_each_run_returns(
    client: tether.Client,
) -> None:
    # A loop of run() on one thread writes each start alone, at once (no group commit), with
    # and without a deduplication key; the process kills itself the moment the last run()
    # returns, and every execution is in the store for another process to finish.
    code = textwrap.dedent(
        """
        import os, signal, run_async_flows
        from tether._core.config import store_for
        handles = [
            (run_async_flows.agent.options(key=f"k{i}") if i % 3 == 0 else run_async_flows.agent)
            .run(i)
            for i in range(30)
        ]
        print(store_for()._starts is None, " ".join(h.id for h in handles), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    crashed = run_child(code, client.db)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    alone, *ids = crashed.stdout.split()
    assert alone == "True"  # each start was written by its own thread, not handed over
    assert len(set(ids)) == 30
    assert [client.get(i).flow for i in ids] == ["agent"] * 30  # committed, not just sent
    assert _resume(client, ids[-1]) == str((29 + 30) * 10)
    assert [client.handle(i).result(timeout=30) for i in ids] == [
        (i + i + 1) * 10 for i in range(30)
    ]


def test_runs_written_together_for_threads_are_durable_when_run_returns(
    client: tether.Client,
) -> None:
    # As above, in a process that kills itself the moment every run() has returned: the
    # starts written for one another in a shared transaction are all in the store, and
    # another process finishes them.
    if not client.db.startswith("sqlite"):
        pytest.skip("holds the SQLite store's write lock")
    code = textwrap.dedent(
        """
        import os, signal, sys, threading, time, run_async_flows
        from tether._core.config import store_for
        from tether.store import _sql_executions

        def until(check):
            deadline = time.monotonic() + 30
            while not check():
                if time.monotonic() > deadline:
                    sys.exit("timed out")
                time.sleep(0.005)

        store = store_for()
        ids = {}

        def start(i):
            run = lambda: ids.__setitem__(i, run_async_flows.agent.run(i).id)
            thread = threading.Thread(target=run)
            thread.start()
            return thread

        with store._writing:
            threads = [start(1)]
            until(_sql_executions._ALONE.locked)
            threads += [start(i) for i in range(2, 7)]
            queued = lambda g: len(g._queue) + len(g._inbox)
            until(lambda: store._starts is not None and store._starts.batches == 1
                  and queued(store._starts) == 4)
        for thread in threads:
            thread.join()
        print(" ".join(ids[i] for i in range(1, 7)), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    crashed = run_child(code, client.db)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    ids = crashed.stdout.split()
    assert len(set(ids)) == 6
    assert [client.get(i).flow for i in ids] == ["agent"] * 6  # committed, not just sent
    assert _resume(client, ids[-1]) == "130"  # one of the four written together


def test_a_sync_flow_started_with_run_async_runs_on_a_thread(client: tether.Client) -> None:
    async def main() -> int:
        return await (await flows.sync_agent.run_async(1))

    assert asyncio.run(main()) == 101


def test_a_key_names_one_execution_whoever_starts_it(client: tether.Client) -> None:
    async def main() -> list[str]:
        first = await flows.keyed.options(key="order-1").run_async(1)
        # Concurrent starts with one key never share a batch: each finds the first's row.
        again = await asyncio.gather(
            *(flows.keyed.options(key="order-1").run_async(i) for i in range(5)),
            flows.keyed.run_async(7, key="order-2"),
            flows.keyed.run_async(8, key="order-2"),
        )
        assert await first == 1
        return [first.id, *(h.id for h in again)]

    ids = asyncio.run(main())
    assert len(set(ids[:6])) == 1
    assert ids[6] == ids[7] != ids[0]
    assert flows.keyed.options(key="order-1").run(9).id == ids[0]
    assert sorted(r.id for r in client.list()) == sorted({ids[0], ids[6]})


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((object(),), {}, tether.SerializationError),
        ((1,), {"key": ""}, tether.UsageError),
        ((1,), {"priority": "high"}, tether.UsageError),
    ],
)
def test_a_wrong_call_gets_the_error_run_gives(
    client: tether.Client, args: tuple[object, ...], kwargs: dict[str, object], error: type
) -> None:
    with pytest.raises(error) as from_run:
        flows.keyed.run(*args, **kwargs)

    async def main() -> None:
        await flows.keyed.run_async(*args, **kwargs)

    with pytest.raises(error) as from_run_async:
        asyncio.run(main())
    assert str(from_run_async.value) == str(from_run.value)
    assert client.list() == []


def test_children_started_with_run_async_are_started_once_across_a_crash(
    client: tether.Client, tmp_path: Path
) -> None:
    side_effects, gate = tmp_path / "effects.log", tmp_path / "gate"
    starter = spawn_child(
        "import run_async_flows\nprint(run_async_flows.started.run(5).id, flush=True)\n"
        "import time\ntime.sleep(120)",
        client.db,
        SIDE_EFFECTS=str(side_effects),
        GATE_FILE=str(gate),
    )
    try:
        assert starter.stdout is not None
        parent = starter.stdout.readline().strip()

        def both_in_flight() -> bool:
            lines = side_effects.read_text().split() if side_effects.exists() else []
            return "step-5" in lines and "step-7" in lines

        retry_until(both_in_flight, what="both children to be in their first step")
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.communicate(timeout=10)
    children = client.list(parent=parent)
    assert len(children) == 2 and {c.status for c in children} == {Status.RUNNING}
    gate.touch()
    assert _resume(client, parent, SIDE_EFFECTS=str(side_effects)) == "[110, 150]"
    record = client.get(parent)
    assert [(c.position, c.name) for c in record.checkpoints] == [
        ("0", "child:agent"),
        ("1", "child:agent"),
    ]
    assert sorted(c.result for c in record.checkpoints) == sorted(c.id for c in children)
    assert len(client.list(parent=parent)) == 2
    ran = Counter(line.split()[1] for line in side_effects.read_text().splitlines())
    # The step in flight when the process died ran again; each step after it once.
    assert ran == Counter({"step-5": 2, "step-7": 2, "step-6": 1, "step-8": 1})


def test_a_start_whose_caller_is_cancelled_while_it_commits_still_runs(
    client: tether.Client,
) -> None:
    def ended() -> tether.ExecutionRecord:
        # Recorded running under this process's lease, so nothing else may run it until the
        # lease runs out: it ends only if it was started here.
        (record,) = retry_until(lambda: client.list(), what="the start to be committed")
        return retry_until(
            lambda: client.get(record.id) if client.get(record.id).status.finished else None,
            what="the execution to end",
        )

    async def main() -> tether.ExecutionRecord:
        starting = asyncio.ensure_future(flows.agent.run_async(3))
        await asyncio.sleep(0)  # one turn: the start is queued on the group commit
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        return await asyncio.to_thread(ended)  # the loop lives on meanwhile

    record = asyncio.run(main())
    assert record.status is Status.SUCCEEDED
    assert client.handle(record.id).result(timeout=5) == 70


def test_awaiting_a_handle_whose_execution_already_ended_returns_at_once(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The safety-net read of an execution held here is put out of reach: a handle that waited
    # for a wake from an execution that had already ended would wait for it (once: a second).
    from tether._runtime import handle as _handle

    monkeypatch.setattr(_handle, "_HELD_POLL", 3600.0)
    ended = flows.agent.run(2)
    assert ended.result(timeout=60) == 50
    failed = flows.failing.run(1)
    with pytest.raises(tether.ExecutionFailed):
        failed.result(timeout=60)

    async def main() -> None:
        assert await asyncio.wait_for(ended.result_async(), 60) == 50
        # Another handle of it (told nothing by the executor) reads the store, at once too.
        other = tether.Client(db_url).handle(ended.id)
        assert await asyncio.wait_for(other.result_async(), 60) == 50
        with pytest.raises(tether.ExecutionFailed):
            await asyncio.wait_for(failed.result_async(), 60)

    asyncio.run(main())


def test_a_handle_is_told_its_success_and_reads_nothing_back(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_for()
    reads: list[str] = []
    get = store.get_execution

    def counting_get(execution_id: str) -> object:
        reads.append(execution_id)
        return get(execution_id)

    monkeypatch.setattr(store, "get_execution", counting_get)

    async def main() -> list[int]:
        handles = await asyncio.gather(*(flows.agent.run_async(i) for i in range(50)))
        return list(await asyncio.gather(*handles))

    assert asyncio.run(main()) == [20 * i + 10 for i in range(50)]
    assert reads == [], "every handle returned what its execution committed here"
