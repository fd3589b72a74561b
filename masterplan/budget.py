"""Cost ceilings: per job (`max_cost_usd`, default JOB_MAX_COST_USD) and per key per UTC day
(KEY_DAILY_BUDGET_USD).

A call's worst case is its bucket reservation priced at its provider's rates: the prompt
estimate at the input price, `max_tokens` at the output price. Before a job is accepted, its
estimate — one pass of every stage on the chain's first provider, a stage's prompt holding the
outputs it needs at their full `max_tokens` — must fit its ceiling (else a 422 saying the
estimate). While it runs, each call first holds its worst case against the job in SQL (only if
the ledger's spend + what is held + it fit); the stage's result gives its holds back in the
transaction that writes its ledger rows, so the spend is never counted twice. A call that can
never fit ends the job `failed` with reason `budget`, keeping what finished; one that would fit
once the job's other calls in flight have settled waits for them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from masterplan.ratelimit import Reservation
from masterplan.ratelimit.estimate import estimate_tokens
from masterplan.settings import ProviderConfig, Settings
from masterplan.stages import JobInput, pipeline


def call_cost_usd(provider: ProviderConfig, reservation: Reservation, max_tokens: int) -> float:
    """The most one call can cost: what it reserved, at the provider's prices."""
    prompt = max(0, reservation.tokens - max_tokens)
    return provider.cost_usd(prompt, min(max_tokens, reservation.tokens))


def estimate_job_usd(settings: Settings, job: JobInput) -> float:
    """One pass of every stage on the chain's first provider, each at its reservation."""
    first = settings.providers[0]
    placeholder: dict[str, dict[str, Any]] = {}
    total = 0.0
    for sd in pipeline().stages:
        request = sd.build(job, {n: placeholder[n] for n in sd.needs}, settings)
        total += first.cost_usd(estimate_tokens(request.prompt_chars), request.max_tokens)
        # What a dependent stage's prompt holds of this one: an output of max_tokens tokens.
        placeholder[sd.name] = {"output": "x" * (4 * request.max_tokens)}
    return total


def job_ceiling(settings: Settings, asked: float | None) -> float | None:
    return asked if asked is not None else settings.job_max_cost_usd


def next_utc_midnight(now: datetime) -> datetime:
    return datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), datetime.min.time(), UTC)


def usd(value: float) -> str:
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"
