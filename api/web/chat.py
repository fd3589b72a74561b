"""What the interview page shows: the conversation as bubbles, the six scores and how each
moved, the tracked assumptions, the quick replies, and whether the masterplan can be built.

Built from the same rows `GET /v1/interviews/{id}` answers with (masterplan/conversation.py
reads them), arranged for people. Everything in it is the founder's or a model's text: the
templates escape it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from masterplan import conversation as cv
from masterplan.db.models import InterviewStatus, InterviewTurn, TurnStatus
from masterplan.interview import SCORES

SCORE_LABEL = {"problem": "Problem", "customer": "Customer", "market": "Market",
               "differentiation": "Differentiation", "feasibility": "Feasibility",
               "business_model": "Business model"}
ASSUMPTION_STATUSES = ("added", "confirmed", "challenged")


@dataclass(frozen=True)
class ChatTurn:
    """One turn as two bubbles: the founder's answer (none for the first turn), then the
    interviewer's question (so far, or what arrived before it failed)."""

    n: int
    status: str  # streaming, done, failed
    answer: str | None
    question: str
    error: str | None  # why its text failed
    structured_error: str | None  # why it has no evaluation (the conversation goes on)
    evaluated: bool


@dataclass(frozen=True)
class ScoreRow:
    name: str
    label: str
    score: int  # 0 to 10
    reason: str
    moved: int  # since the evaluation before

    @property
    def moved_text(self) -> str:
        return f"+{self.moved}" if self.moved > 0 else (f"−{-self.moved}" if self.moved < 0 else "")

    @property
    def moved_words(self) -> str:
        if self.moved == 0:
            return "unchanged since the turn before"
        return f"{'up' if self.moved > 0 else 'down'} {abs(self.moved)} since the turn before"


@dataclass(frozen=True)
class Assumption:
    statement: str
    status: str
    since: int | None
    changed: bool

    @property
    def kind(self) -> str:
        return self.status if self.status in ASSUMPTION_STATUSES else "other"


@dataclass(frozen=True)
class InterviewView:
    id: str
    idea: str
    status: str  # open, done
    created_at: datetime
    turns: list[ChatTurn]
    scores: list[ScoreRow]
    scored_at: int | None  # the turn the scores are from
    assumptions: list[Assumption]
    choices: list[str]  # the latest turn's quick replies, while answers are taken
    job_id: str | None
    cost_usd: float
    streaming: int | None  # the turn being written now

    @property
    def open(self) -> bool:
        return self.status == InterviewStatus.OPEN.value

    @property
    def last(self) -> int:
        return self.turns[-1].n if self.turns else 0

    @property
    def label(self) -> str:
        if self.job_id:
            return "masterplan built"
        return "in progress" if self.open else "finished"


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _scores(evaluation: dict[str, Any] | None) -> list[ScoreRow]:
    rows = []
    for name in SCORES:
        s = (evaluation or {}).get(name)
        if not isinstance(s, dict):
            continue
        rows.append(ScoreRow(name=name, label=SCORE_LABEL.get(name, name), reason=str(s.get("reason") or ""),
                             score=min(10, max(0, _int(s.get("score")))), moved=_int(s.get("moved"))))
    return rows


def _assumptions(stored: dict[str, Any] | None) -> list[Assumption]:
    items = (stored or {}).get("items", [])
    return [Assumption(statement=str(a.get("statement", "")), status=str(a.get("status", "")),
                       since=_int(a["since"]) if a.get("since") is not None else None,
                       changed=bool(a.get("changed"))) for a in items if isinstance(a, dict)]


def _turn(t: InterviewTurn) -> ChatTurn:
    return ChatTurn(n=t.n, status=t.status, answer=t.answer, question=t.question or "",
                    error=t.error, structured_error=t.structured_error,
                    evaluated=t.structured is not None)


def _choices(t: InterviewTurn) -> list[str]:
    choices = (t.structured or {}).get("choices") if t.status == TurnStatus.DONE.value else None
    return [str(c) for c in choices if str(c).strip()] if isinstance(choices, list) else []


def interview_view(session: Session, interview_id: str, *, owner: str) -> InterviewView | None:
    """The interview as its page shows it, or None when it does not exist for this owner."""
    try:
        interview = cv.get(session, interview_id, owner)
    except cv.NotFound:
        return None
    rows = cv.turns(session, interview_id)
    open_ = interview.status == InterviewStatus.OPEN.value
    streaming = next((t.n for t in rows if t.status == TurnStatus.STREAMING.value), None)
    scored = [t.n for t in rows if t.structured is not None]
    return InterviewView(
        id=interview.id, idea=interview.idea, status=interview.status,
        created_at=interview.created_at, turns=[_turn(t) for t in rows],
        scores=_scores(interview.evaluation), scored_at=scored[-1] if scored else None,
        assumptions=_assumptions(interview.assumptions),
        choices=_choices(rows[-1]) if rows and open_ else [], job_id=interview.job_id,
        cost_usd=round(sum(float((t.usage or {}).get("cost_usd", 0.0)) for t in rows), 6),
        streaming=streaming)
