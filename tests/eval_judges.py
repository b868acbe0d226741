"""pydantic-evals evaluators for tests/test_replay_evals.py (and `--evaluator` in its CLI
tests): an LLM judge whose model is a Pydantic AI FunctionModel (offline, and it counts the
outputs it judged), a label evaluator of our own, and a span-based one that cannot work on
a replay. Imported only where pydantic-evals is installed."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_evals.evaluators import EvaluationReason, Evaluator, EvaluatorContext, LLMJudge
from pydantic_evals.evaluators.common import HasMatchingSpan
from pydantic_evals.otel.span_tree import SpanQuery

JUDGED: list[str] = []  # the prompts the judge model was given, in order


def _judge(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Passes an output that reads like a weather report: the rubric, applied by a rule."""
    prompt = "".join(
        str(part.content)
        for message in messages
        for part in message.parts
        if isinstance(part, UserPromptPart)
    )
    JUDGED.append(prompt)
    output = prompt.split("<Output>", 1)[1].split("</Output>", 1)[0]
    passed = "report:" in output
    verdict = {
        "reason": "it is worded as a report" if passed else "it is not worded as a report",
        "pass": passed,
        "score": 1.0 if passed else 0.0,
    }
    return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, verdict)])


JUDGE_MODEL = FunctionModel(_judge, model_name="judge")

# The judge gives a pass/fail verdict with its reason (LLMJudge's default `assertion`).
reads_like_a_report = LLMJudge(rubric="The output is worded as a weather report", model=JUDGE_MODEL)


@dataclass
class Tone(Evaluator):
    """A label: how the answer begins ("report", "forecast", ...), with a reason."""

    def evaluate(self, ctx: EvaluatorContext) -> EvaluationReason:
        first = str(ctx.output).split(":", 1)[0]
        return EvaluationReason(value=first, reason=f"the answer begins with {first!r}")


tone = Tone()

CONTEXTS: list[EvaluatorContext] = []  # what `remember` was given, in order


@dataclass
class Remember(Evaluator):
    """Keeps each context it is given, to show what a replay puts in one."""

    def evaluate(self, ctx: EvaluatorContext) -> bool:
        CONTEXTS.append(ctx)
        return True


remember = Remember()

# Asks for the span tree, which tether's replays do not record.
made_a_model_request = HasMatchingSpan(query=SpanQuery(name_contains="model request"))
