"""A Pydantic AI research agent that survives crashes and waits for a human's approval.

    pip install -e '.[ai]'                                            # Pydantic AI (the `ai` extra)
    python examples/research_agent.py "durable execution"             # offline, scripted model
    python examples/research_agent.py "durable execution" --crash     # killed mid-run (SIGKILL)
    python examples/research_agent.py --resume EXECUTION_ID           # ...and resumed
    TETHER_MODEL=openai:gpt-4o OPENAI_API_KEY=sk-... python examples/research_agent.py "..."

The agent searches, reads pages (two at once) and asks to publish its report; publishing
needs a human's approval. Every model request and tool call is a checkpoint: after a crash,
`--resume` runs the flow again and the agent gets the recorded responses and results back
instead of calling the model and the tools again. While it waits for approval the execution
holds no process; the approval can come from this script's prompt (or stdin, when it is not
a terminal: no answer there approves), another process (`tether.Client().input(...)`) or
the CLI, run from the same directory (`tether executions waits`, then
`tether executions input EXECUTION_ID --value true`): the prompt notices an answer given
elsewhere and the script carries on.

Without TETHER_MODEL the model is a scripted `FunctionModel`: no network, no API key. With
it, the agent talks to that provider (the tools stay offline fakes).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import cast

try:
    import pydantic_ai
    from pydantic_ai import Agent
    from pydantic_ai.messages import (
        ModelMessage,
        ModelRequest,
        ModelResponse,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
        UserPromptPart,
    )
    from pydantic_ai.models.function import AgentInfo, FunctionModel
except ModuleNotFoundError:
    sys.exit("This example needs Pydantic AI, the `ai` extra: pip install -e '.[ai]'")

import tether
import tether.ai

# Pydantic AI prints a first-run banner (about observability with Logfire) to a terminal;
# this script owns its output. `PYDANTIC_AI_NO_BANNER=1` does the same from the environment.
pydantic_ai.BANNER_ENABLED = False

PAGES = {
    "https://example.org/durable-execution": "Durable execution records each step's result "
    "so that a crashed program resumes where it stopped.",
    "https://example.org/agents-crash": "Agents run for minutes and call paid APIs; a crash "
    "halfway wastes both unless finished steps are kept.",
    "https://example.org/human-in-the-loop": "Risky actions wait for a person to approve them, "
    "sometimes for days.",
}


# --- the offline model: a script that plays the part of an LLM -------------------------


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = sum(isinstance(m, ModelResponse) for m in messages) + 1
    last = messages[-1]
    returns = (
        [p for p in last.parts if isinstance(p, ToolReturnPart)]
        if isinstance(last, ModelRequest)
        else []
    )
    if turn == 1:
        prompt = next(p.content for p in messages[0].parts if isinstance(p, UserPromptPart))
        topic = str(prompt).removeprefix("Research ")
        return ModelResponse(parts=[ToolCallPart("search_web", {"query": topic})])
    if turn == 2:
        urls = cast(list[str], returns[0].content)[:2]
        return ModelResponse(parts=[ToolCallPart("read_page", {"url": url}) for url in urls])
    if turn == 3:
        body = " ".join(str(r.content) for r in returns)
        return ModelResponse(
            parts=[
                ToolCallPart(
                    "publish_report", {"title": "Why agents need durability", "body": body}
                )
            ]
        )
    return ModelResponse(parts=[TextPart(f"Done: {returns[0].content}")])


def build_agent() -> Agent[None, str]:
    model = os.environ.get("TETHER_MODEL")  # e.g. openai:gpt-4o, with OPENAI_API_KEY set
    agent = Agent(
        model or FunctionModel(scripted_model),
        instructions=(
            "Research the topic: search the web, read the two most relevant pages (at once), "
            "then publish a short report with publish_report and say what you published."
        ),
        name="researcher",
    )

    @agent.tool_plain
    def search_web(query: str) -> list[str]:
        """Search the web; returns the URLs of the best matches."""
        print(f"    [pid {os.getpid()}] search_web({query!r})", flush=True)
        return list(PAGES)

    @agent.tool_plain
    async def read_page(url: str) -> str:
        """Read a web page."""
        print(f"    [pid {os.getpid()}] read_page({url!r})", flush=True)
        if os.environ.get("RESEARCH_CRASH") == url:
            print(f"    [pid {os.getpid()}] ...and the process is killed (SIGKILL)", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return PAGES.get(url, "404: no such page")

    @agent.tool_plain(requires_approval=True)
    def publish_report(title: str, body: str) -> str:
        """Publish the report (a person must approve it first)."""
        print(f"    [pid {os.getpid()}] publish_report({title!r})", flush=True)
        return f"published {title!r} ({len(body)} characters)"

    return agent


researcher = tether.ai.durable(build_agent())


# A budget stops the run before a model request that would take it over the limit.
@tether.flow(budget=tether.Budget(max_tokens=200_000))
async def research(topic: str) -> str:
    result = await researcher.run(f"Research {topic}")
    return result.output


# --- running it --------------------------------------------------------------------------


def ask(prompt: str, answered: Callable[[], bool]) -> str | None:
    """Read a line from stdin, or None once `answered()` says the input came from elsewhere
    (the CLI, another process) meanwhile. No answer at all (end of stdin) approves."""
    print(prompt, end="", flush=True)
    while True:
        try:
            ready, _, _ = select.select([sys.stdin], [], [], 0.25)
        except (OSError, ValueError):  # stdin cannot be polled here (Windows): just read
            ready = [sys.stdin]
        if ready:
            line = sys.stdin.readline()
            if not line:
                print("(no answer on stdin: approving)")
                return "y"
            return line.strip().lower()
        if answered():
            print()
            return None


def approve_pending(execution_id: str, answer: str | None) -> None:
    """Answer the execution's pending approvals, asking on the terminal unless told."""
    client = tether.Client()
    for wait in client.pending_waits():
        if wait.execution_id != execution_id:
            continue
        question = wait.question or {}
        print(f"\n  The agent wants to call {question.get('tool')} with {question.get('args')}")

        def answered(name: str = wait.name) -> bool:
            return not any(
                w.name == name and w.execution_id == execution_id for w in client.pending_waits()
            )

        reply = answer or ask("  Approve? [y/n] ", answered)
        if reply is None:
            print("  -> answered elsewhere\n")
            continue
        approved = reply.startswith("y")
        if approved:
            value: object = True
        else:
            value = {"approved": False, "message": "Not now: the report needs more sources."}
        try:
            client.input(execution_id, wait.name, value, by="terminal")
        except (tether.WaitAlreadyResolved, tether.WaitNotFound, tether.InvalidStateError):
            print("  -> answered elsewhere\n")  # the CLI or another process was first
            continue
        print(f"  -> {'approved' if approved else 'denied'}\n")


def follow(handle: tether.Handle[str], answer: str | None) -> None:
    client = tether.Client()
    while True:
        status = client.get(handle.id).status
        if status is tether.Status.WAITING:
            approve_pending(handle.id, answer)
        elif status.finished:
            break
        time.sleep(0.1)
    print(f"\nResult: {handle.result()}")
    record = client.get(handle.id)
    steps = [(c.position, c.name) for c in record.checkpoints]
    steps += [(w.position, f"wait {w.name} ({w.status})") for w in record.waits]
    print("\nRecorded, by position:")
    for position, name in sorted(steps):
        print(f"  {position:>2}  {name}")
    usage = record.usage
    if usage is not None:
        cost = (
            "unknown (no price for this model)"
            if usage.cost_usd is None
            else f"${usage.cost_usd:.4f}"
        )
        print(
            f"\nModel usage: {usage.requests} requests, {usage.input_tokens:,} input and "
            f"{usage.output_tokens:,} output tokens, cost {cost}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("topic", nargs="?", default="durable execution for AI agents")
    parser.add_argument("--resume", metavar="EXECUTION_ID", help="resume a killed execution")
    parser.add_argument("--crash", action="store_true", help="SIGKILL inside the 2nd read_page")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--approve", action="store_const", const="y", dest="answer")
    group.add_argument("--deny", action="store_const", const="n", dest="answer")
    args = parser.parse_args()

    if args.resume:
        print(f"Resuming {args.resume} in a new process (pid {os.getpid()})")
        follow(tether.Client().resume(args.resume), args.answer)
        return
    if args.crash:
        os.environ["RESEARCH_CRASH"] = list(PAGES)[1]
    handle = research.run(args.topic)
    print(f"Started execution {handle.id} (pid {os.getpid()})")
    if args.crash:
        print(f"  after the crash: python {sys.argv[0]} --resume {handle.id}")
    follow(handle, args.answer)


if __name__ == "__main__":
    main()
