"""Tables: jobs, stage_runs, llm_calls, interviews, interview_turns. The database is the source
of truth for a job and for an interview."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


OPEN = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (RunStatus.SUCCEEDED.value, RunStatus.FAILED.value, RunStatus.CANCELLED.value)

_TS = sa.DateTime(timezone=True)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: sa.JSON, datetime: _TS}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(64), index=True)
    idea: Mapped[str] = mapped_column(sa.Text)
    context: Mapped[dict[str, Any] | None]
    status: Mapped[str] = mapped_column(sa.String(16), default=JobStatus.QUEUED.value, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    deadline_at: Mapped[datetime]
    error: Mapped[str | None] = mapped_column(sa.Text)
    # Recovery: an open job with nothing done by `check_at` is re-driven from its rows;
    # `redrives` counts re-drives since its last finished stage.
    check_at: Mapped[datetime | None] = mapped_column(index=True)
    redrives: Mapped[int] = mapped_column(default=0)
    # Fair share (masterplan/admission.py): a job is in flight from `admitted_at` until it ends;
    # until then it waits `queued` and nothing of it is published. `lane` is "first" for a job
    # admitted while its key had no other job in flight, "more" otherwise.
    admitted_at: Mapped[datetime | None] = mapped_column(index=True)
    lane: Mapped[str] = mapped_column(sa.String(8), default="first")
    # Cost ceiling (masterplan/budget.py), and the worst case of its calls in flight held
    # against it; what was spent is the ledger's.
    max_cost_usd: Mapped[float | None] = mapped_column(sa.Float)
    held_usd: Mapped[float] = mapped_column(sa.Float, default=0.0)
    # A client's retry of the same submission (Idempotency-Key header) finds this job.
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(128))

    __table_args__ = (
        sa.Index("ix_jobs_owner_created", "owner", "created_at"),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
    )


class StageRun(Base):
    """One stage of one job: claimed under a lease renewed while its call runs, finished once."""

    __tablename__ = "stage_runs"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(sa.String(32))
    status: Mapped[str] = mapped_column(sa.String(16), default=RunStatus.PENDING.value)
    output: Mapped[dict[str, Any] | None]
    provider: Mapped[str | None] = mapped_column(sa.String(64))
    model: Mapped[str | None] = mapped_column(sa.String(128))
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(sa.Text)
    claimed_at: Mapped[datetime | None]
    claim_id: Mapped[str | None] = mapped_column(sa.String(32))
    lease_until: Mapped[datetime | None]
    # Handed back to wait for a provider: its retry is due then (a wait, not a stall).
    not_before: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    latency_ms: Mapped[int | None]

    __table_args__ = (
        sa.UniqueConstraint("job_id", "stage", name="uq_stage_runs_job_stage"),
        sa.Index("ix_stage_runs_lease", "status", "lease_until"),
    )


class LLMCall(Base):
    """One row per attempt: success, failure, or a skip (cooldown, bucket wait)."""

    __tablename__ = "llm_calls"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    # A job's stage, or an interview's turn (stage "interview"): one of the two is set.
    job_id: Mapped[str | None] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                                               index=True)
    interview_id: Mapped[str | None] = mapped_column(
        sa.ForeignKey("interviews.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(sa.String(32))
    provider: Mapped[str] = mapped_column(sa.String(64))
    model: Mapped[str] = mapped_column(sa.String(128))
    input_tokens: Mapped[int] = mapped_column(default=0)
    output_tokens: Mapped[int] = mapped_column(default=0)
    # Parts of input_tokens, priced apart: read from the provider's prompt cache, written to it.
    cached_input_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    cache_write_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    cost_usd: Mapped[float] = mapped_column(sa.Float, default=0.0)
    latency_ms: Mapped[int] = mapped_column(default=0)
    wait_ms: Mapped[int] = mapped_column(default=0)
    outcome: Mapped[str] = mapped_column(sa.String(32))
    error_class: Mapped[str | None] = mapped_column(sa.String(64))
    error: Mapped[str | None] = mapped_column(sa.Text)
    fallback_from: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the attempt began (null for rows older than this column, and for lost calls).
    started_at: Mapped[datetime | None]


class InterviewStatus(StrEnum):
    OPEN = "open"  # the founder can answer
    DONE = "done"  # the interviewer has enough, the turns ran out, or a masterplan was built


class TurnStatus(StrEnum):
    STREAMING = "streaming"
    DONE = "done"
    FAILED = "failed"  # its text failed; the founder can answer again


class Interview(Base):
    """A conversation that sharpens an idea; its turns, then (maybe) a masterplan job."""

    __tablename__ = "interviews"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(64))
    idea: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16), default=InterviewStatus.OPEN.value)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The last turn's start or end: an interview touched within INTERACTIVE_WINDOW_S keeps its
    # share of the provider buckets from batch calls.
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # The latest evaluation, and the assumptions tracked across turns.
    evaluation: Mapped[dict[str, Any] | None]
    assumptions: Mapped[dict[str, Any] | None]
    job_id: Mapped[str | None] = mapped_column(sa.String(36))

    __table_args__ = (sa.Index("ix_interviews_owner_created", "owner", "created_at"),)


class InterviewTurn(Base):
    """The founder's answer (none for the first turn), the question streamed back, and the
    structured part made by a second call."""

    __tablename__ = "interview_turns"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    interview_id: Mapped[str] = mapped_column(sa.ForeignKey("interviews.id", ondelete="CASCADE"))
    n: Mapped[int]
    answer: Mapped[str | None] = mapped_column(sa.Text)
    question: Mapped[str | None] = mapped_column(sa.Text)
    structured: Mapped[dict[str, Any] | None]
    structured_error: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16), default=TurnStatus.STREAMING.value)
    error: Mapped[str | None] = mapped_column(sa.Text)
    provider: Mapped[str | None] = mapped_column(sa.String(64))
    model: Mapped[str | None] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    first_token_ms: Mapped[int | None]
    # The turn's calls (both of them, every attempt): calls, tokens in and out, cost.
    usage: Mapped[dict[str, Any] | None]

    __table_args__ = (sa.UniqueConstraint("interview_id", "n", name="uq_interview_turns_n"),)
