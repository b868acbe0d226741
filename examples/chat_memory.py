"""A chat whose history lives in tether.memory: each message is one durable execution.

    pip install -e '.[ai]'                                    # Pydantic AI (the `ai` extra)
    python examples/chat_memory.py alice "What is durable execution?"
    python examples/chat_memory.py alice "Why does it matter for agents?"
    tether memory history history --namespace chat:alice     # one version per message
    TETHER_MODEL=openai:gpt-4o OPENAI_API_KEY=sk-... python examples/chat_memory.py alice "..."

Each message runs the `reply` flow: it reads the conversation's history from memory, runs a
durable Pydantic AI agent with it, and writes the new history back. Inside the flow both
calls are recorded, so a reply that crashes and is resumed reads the same history and
writes it once. The history is stored message by message, by content hash: each turn
stores its new messages only, however long the conversation gets.

Without TETHER_MODEL the model is a scripted `FunctionModel` that counts the turns: no
network, no API key.
"""

from __future__ import annotations

import argparse
import os
import sys

try:
    import pydantic_ai
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel
except ModuleNotFoundError:
    sys.exit("This example needs Pydantic AI, the `ai` extra: pip install -e '.[ai]'")

import tether
import tether.ai

# Pydantic AI prints a first-run banner (about observability with Logfire) to a terminal;
# this script owns its output. `PYDANTIC_AI_NO_BANNER=1` does the same from the environment.
pydantic_ai.BANNER_ENABLED = False


def offline_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = sum(isinstance(m, ModelResponse) for m in messages) + 1
    return ModelResponse(
        parts=[TextPart(f"(turn {turn}) I remember {len(messages) - 1} earlier messages.")]
    )


agent = tether.ai.durable(Agent(os.environ.get("TETHER_MODEL") or FunctionModel(offline_model)))


@tether.flow
async def reply(user: str, message: str) -> str:
    conversation = f"chat:{user}"
    history = tether.memory.get("history", [], namespace=conversation, type=list[ModelMessage])
    result = await agent.run(message, message_history=history)
    tether.memory.set("history", result.all_messages(), namespace=conversation)
    return result.output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("user", help="whose conversation (its memory namespace is chat:USER)")
    parser.add_argument("message", help="what the user says")
    options = parser.parse_args()
    print(reply.run(options.user, options.message).result(timeout=300))


if __name__ == "__main__":
    main()
