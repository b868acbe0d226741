"""A research agent that is killed with SIGKILL halfway and resumed by a new process.

    python -m tether.demo [--db sqlite:///path.db] [--kill-after N]

The agent plans, searches three sources, drafts and writes a report. Each step
is a checkpoint that takes a moment (standing in for a model call). The demo
starts the agent in a child process, kills that process with SIGKILL after N
steps have been recorded, then resumes the execution in a fresh process: the
recorded steps return their results without running again, and only the rest
runs. No network, no API key: the "model" is a deterministic function.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any

import tether
from tether.store import redact

STEP_SECONDS = 0.4


def _think(what: str) -> None:
    # Stands in for a model call: slow enough to see, and to be killed in the middle of.
    print(f"    [pid {os.getpid()}] running  {what}", flush=True)
    tether.log(pid=os.getpid())
    time.sleep(STEP_SECONDS)


@tether.checkpoint
def plan(topic: str) -> list[str]:
    _think(f"plan({topic!r})")
    return [f"{topic}: origins", f"{topic}: how it works", f"{topic}: who uses it"]


@tether.checkpoint(retries=2, backoff=0.2)
def search(query: str) -> dict[str, Any]:
    _think(f"search({query!r})")
    return {"query": query, "finding": f"three facts about {query.split(': ')[1]}"}


@tether.checkpoint
def draft(findings: list[dict[str, Any]]) -> str:
    _think(f"draft({len(findings)} findings)")
    return " / ".join(f["finding"] for f in findings)


@tether.checkpoint
def write_report(topic: str, draft_text: str) -> str:
    _think("write_report(...)")
    return f"Report on {topic}: {draft_text}."


@tether.flow
def research_agent(topic: str) -> str:
    queries = plan(topic)
    findings = [search(q) for q in queries]
    return write_report(topic, draft(findings))


STEPS = 6


def _start_child(topic: str) -> None:
    handle = research_agent.run(topic)
    print(f"    execution {handle.id} started", flush=True)
    handle.result()


def _resume_child(execution_id: str) -> None:
    print(f"    [pid {os.getpid()}] resuming {execution_id}", flush=True)
    result = tether.Client().resume(execution_id).result()
    print(f"    result: {result}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tether.demo",
        description="Kill a running agent with SIGKILL, resume it, and see no step run twice.",
    )
    parser.add_argument(
        "--db", help="store URL (default: TETHER_DB or sqlite:///.tether/tether.db)"
    )
    parser.add_argument(
        "--kill-after", type=int, default=3, metavar="N",
        help=f"kill the agent once N of its {STEPS} steps are recorded (default 3)",
    )  # fmt: skip
    parser.add_argument("--start-child", help=argparse.SUPPRESS)
    parser.add_argument("--resume-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.db:
        os.environ["TETHER_DB"] = args.db
        tether.configure(db=args.db)
    if args.start_child:
        _start_child(args.start_child)
        return 0
    if args.resume_child:
        _resume_child(args.resume_child)
        return 0
    if not 1 <= args.kill_after < STEPS:
        parser.error(f"--kill-after must be between 1 and {STEPS - 1}")

    client = tether.Client()
    print(f"tether demo: store {redact(client.db)}\n")
    print(f"1. Start the agent in a child process; kill it after {args.kill_after} steps.")
    child = _spawn("--start-child", "durable execution")
    execution_id = _wait_for_steps(client, child, args.kill_after)
    child.send_signal(signal.SIGKILL)
    child.wait()
    print(f"    SIGKILL -> pid {child.pid} is dead; status in the store: "
          f"{client.get(execution_id).status.value}\n")  # fmt: skip

    print("2. Resume it from a brand-new process. Recorded steps do not run again:")
    resumer = _spawn("--resume-child", execution_id)
    if resumer.wait() != 0:
        print("    the resuming process failed", file=sys.stderr)
        return 1

    record = client.get(execution_id)
    print(f"\n3. The execution's timeline ({record.status.value}, run {record.attempt} times):")
    for cp in record.checkpoints:
        pid = cp.metadata.get("pid", "?")
        print(f"    #{cp.position} {cp.name:<13} {cp.status.value:<10} ran in pid {pid}")
    first_pid = record.checkpoints[0].metadata.get("pid")
    recorded = sum(1 for cp in record.checkpoints if cp.metadata.get("pid") == first_pid)
    print(f"\n    The {recorded} steps recorded before the kill did not run again. The step in "
          "flight when\n    the process died ran again from its start (at least once), with "
          "the same\n    tether.current().idempotency_key both times.")  # fmt: skip
    print(f"\n    Inspect it: tether.Client().get({execution_id!r})")
    return 0


def _spawn(mode: str, value: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tether.demo", mode, value])


def _wait_for_steps(client: tether.Client, child: subprocess.Popen[bytes], steps: int) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit("the agent process exited before it could be killed")
        found = client.list(flow=research_agent.name, limit=1)
        if found and found[0].created_at.timestamp() > _STARTED:
            record = client.get(found[0].id)
            if len(record.checkpoints) >= steps:
                return record.id
        time.sleep(0.02)
    child.kill()
    raise SystemExit("the agent did not get going within 60 s")


_STARTED = time.time()

if __name__ == "__main__":
    sys.exit(main())
