"""tether.ai: durable Pydantic AI agents.

```python
import tether
from pydantic_ai import Agent

agent = tether.ai.durable(Agent("openai:gpt-4o", tools=[search]))


@tether.flow
async def research(topic: str) -> str:
    return (await agent.run(f"Research {topic}")).output
```

Inside a flow, each model request is recorded as a `model_request` checkpoint call and each
tool call as `tool:<name>`; after a crash the flow resumes and the agent gets the recorded
responses and results back instead of calling the model and the tools again. Tools that need
approval suspend the flow on a `tether.wait` until someone answers. Outside a flow the agent
behaves exactly like the plain one.

`tether.llm()` / `tether.llm_async()` (also importable from here) make one model call as one
checkpoint call. Model requests record their usage and cost with the checkpoint call that
made them, and are checked against the flow's `tether.Budget` before they are made.

Built on Pydantic AI's durable-execution capability interface: `TetherDurability` can also be
passed to `Agent(capabilities=[...])` directly. Needs Pydantic AI: `pip install -e '.[ai]'` in a
clone of tether (and a provider's client, e.g. `pydantic-ai-slim[openai]`).
"""

from __future__ import annotations

try:
    import pydantic_ai
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "tether.ai needs Pydantic AI: pip install -e '.[ai]' in a clone of tether "
        "(or pip install pydantic-ai-slim)"
    ) from exc

from ._agent import DurableAgent, durable
from ._deferred import Approval
from ._durability import TetherDurability, TetherOperationBackend
from ._llm import llm, llm_async
from ._units import CheckpointOptions, TetherOperationNamer

# tether runs agents on its own threads and event loop, for flows, and owns what the
# process prints: Pydantic AI's first-run banner (shown once, on a terminal) would land in
# the middle of that output. The switch is Pydantic AI's documented one for such runners.
pydantic_ai.BANNER_ENABLED = False

__all__ = [
    "Approval",
    "CheckpointOptions",
    "DurableAgent",
    "TetherDurability",
    "TetherOperationBackend",
    "TetherOperationNamer",
    "durable",
    "llm",
    "llm_async",
]
