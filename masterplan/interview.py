"""The interview: prompts, the structured part of a turn, and what is tracked across turns.

A turn is two calls (the seed's lesson: a reply that mixes prose and JSON breaks on any model
that ignores formatting instructions):

1. `question_request`: the interviewer's next question as plain text, streamed to the founder.
   It never carries the structured part.
2. `structure_request`: after the text ends, a schema-validated call that evaluates the
   conversation so far (`TurnOutput`), with the repair and the fallback every structured call has.

Pure functions: texts in, `LLMRequest` or plain data out. No I/O (that is masterplan/conversation.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from masterplan.llm.base import LLMRequest, Message, json_instructions

STAGE = "interview"

# The scores every evaluation gives, in this order.
SCORES: tuple[str, ...] = ("problem", "customer", "market", "differentiation", "feasibility",
                           "business_model")


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Score(_Out):
    score: int = Field(ge=0, le=10)
    reason: str = Field(min_length=1, description="one line")


class Evaluation(_Out):
    """How far the idea is thought through, 0 (not at all) to 10, with a one-line reason each."""

    problem: Score
    customer: Score
    market: Score
    differentiation: Score
    feasibility: Score
    business_model: Score


class TrackedAssumption(_Out):
    statement: str = Field(min_length=1)
    status: Literal["added", "confirmed", "challenged"]


class Choices(_Out):
    """2 to 4 short answers the founder could give next. Named fields, not an array: strict
    structured outputs cannot say how many items an array must hold, but they can say which
    fields are required."""

    first: str = Field(min_length=1)
    second: str = Field(min_length=1)
    third: str | None = None
    fourth: str | None = None

    def as_list(self) -> list[str]:
        out: list[str] = []
        for c in (self.first, self.second, self.third, self.fourth):
            if c and c.strip() and c.strip() not in out:
                out.append(c.strip())
        return out


class TurnOutput(_Out):
    """The structured part of a turn."""

    eval: Evaluation
    assumptions: list[TrackedAssumption] = Field(
        description="Every assumption the idea rests on so far: new ones `added`, those the "
                    "founder's answers support `confirmed`, those they put in doubt `challenged`.")
    choices: Choices
    done: bool = Field(description="true when the interview has enough to build a masterplan")


@dataclass(frozen=True)
class Exchange:
    """One turn as the transcript has it: the founder's answer (none for the first turn) and
    the interviewer's question (none when its text failed)."""

    answer: str | None
    question: str | None


_INTERVIEWER = (
    "You are a sharp, friendly startup interviewer. Before a board of specialists writes a "
    "masterplan for the founder's idea, you find out what they need to know: the problem, who "
    "has it, the market, what is different, whether it can be built, how it makes money. Ask "
    "exactly one short question per turn, building on the founder's last answer; challenge a "
    "vague answer. Plain conversational text only: no lists, no JSON, no scores."
)


def _conversation(idea: str, turns: Sequence[Exchange]) -> tuple[Message, ...]:
    """The chat so far: the idea, then each question and the answer to it. A question whose
    text failed is left out; its answer still counts."""
    messages: list[Message] = [Message("user", f"Startup idea:\n{idea.strip()}")]
    for t in turns:
        if t.answer is not None:
            if messages[-1].role == "user":
                messages[-1] = Message("user", f"{messages[-1].content}\n\n{t.answer}")
            else:
                messages.append(Message("user", t.answer))
        if t.question is not None:
            messages.append(Message("assistant", t.question))
    return tuple(messages)


def question_request(idea: str, turns: Sequence[Exchange], *, max_tokens: int) -> LLMRequest:
    """The next question; `turns` ends with the turn being asked (its answer, no question)."""
    return LLMRequest(system=_INTERVIEWER, messages=_conversation(idea, turns),
                      max_tokens=max_tokens, temperature=0.7, tags={"stage": STAGE})


def transcript_text(turns: Sequence[Exchange]) -> str:
    lines = []
    for t in turns:
        if t.answer is not None:
            lines.append(f"Founder: {t.answer}")
        if t.question is not None:
            lines.append(f"Interviewer: {t.question}")
    return "\n".join(lines)


def structure_request(idea: str, turns: Sequence[Exchange], tracked: Sequence[dict[str, Any]],
                      *, max_tokens: int) -> LLMRequest:
    """The evaluation of the conversation, its last question included."""
    known = "\n".join(f"- [{a['status']}] {a['statement']}" for a in tracked) or "(none yet)"
    body = (f"Startup idea:\n{idea.strip()}\n\nInterview so far:\n{transcript_text(turns)}\n\n"
            f"Assumptions tracked so far:\n{known}\n\n"
            "Evaluate the idea as the conversation now stands, update the assumptions, offer "
            "the founder 2 to 4 short answers to the interviewer's last question, and say "
            "whether the interview has enough.")
    return LLMRequest(
        system="You evaluate a startup interview for the board that will plan the idea."
               + json_instructions(TurnOutput),
        messages=(Message("user", body),), max_tokens=max_tokens, temperature=0.0,
        schema=TurnOutput, tags={"stage": STAGE})


# -- what is tracked across turns (pure) -----------------------------------------------------
def with_moves(evaluation: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """Each score with `moved`: its change since the last evaluation (0 for the first)."""
    out = {}
    for name in SCORES:
        s = dict(evaluation[name])
        before = (previous or {}).get(name)
        s["moved"] = s["score"] - before["score"] if before else 0
        out[name] = s
    return out


def _norm(statement: str) -> str:
    return " ".join(statement.lower().split()).rstrip(".")


def track(tracked: Sequence[dict[str, Any]], reported: Sequence[dict[str, Any]], turn: int
          ) -> list[dict[str, Any]]:
    """The assumptions after this turn: every one seen so far, each with its latest status, the
    turn it was first seen in (`since`) and whether this turn changed it (`changed`)."""
    out = {_norm(a["statement"]): dict(a, changed=False) for a in tracked}
    for a in reported:
        key = _norm(a["statement"])
        old = out.get(key)
        if old is None:
            out[key] = {"statement": a["statement"], "status": a["status"], "since": turn,
                        "changed": True}
        elif old["status"] != a["status"] and a["status"] != "added":
            old.update(status=a["status"], changed=True)
    return list(out.values())


def job_context(idea: str, turns: Sequence[Exchange], tracked: Sequence[dict[str, Any]],
                interview_id: str) -> dict[str, Any]:
    """A masterplan job's context built from an interview (the personas' prompts render it)."""
    return {"interview": {
        "id": interview_id,
        "transcript": [{"question": t.question, "answer": t.answer} for t in turns
                       if t.question is not None or t.answer is not None],
        "assumptions": [{"statement": a["statement"], "status": a["status"]} for a in tracked],
    }}


def render_context(context: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An interview in a job's context as prose for the prompts, and the rest of the context."""
    rest = {k: v for k, v in context.items() if k != "interview"}
    iv = context.get("interview")
    if not isinstance(iv, dict):
        return "", context
    lines = ["Founder's interview:"]
    for t in iv.get("transcript", []):
        if t.get("answer"):
            lines.append(f"Founder: {t['answer']}")
        if t.get("question"):
            lines.append(f"Interviewer: {t['question']}")
    if iv.get("assumptions"):
        lines.append("\nAssumptions tracked in the interview:")
        lines += [f"- [{a['status']}] {a['statement']}" for a in iv["assumptions"]]
    return "\n".join(lines), rest
