"""GET /metrics: Prometheus metrics, computed at scrape time.

The database is the source of truth that every worker on every machine writes to, so the job,
stage and LLM figures are aggregates of its tables (`jobs`, `stage_runs`, the `llm_calls`
ledger) rather than per-process counters that would have to be summed across workers and would
reset on every restart. Queue depth comes from the broker (Redis `LLEN`): Flower has no
queue-length metric. What is left of each provider's daily cap comes from its buckets in Redis,
which every worker debits. `install(app)` mounts the route.

The figures are every tenant's totals, so the route answers to its own credential,
`METRICS_TOKEN` (a bearer token), never to the tenants' API keys; without it set, /metrics does
not exist (404), so a scanner learns nothing. AUTH_DISABLED (local use) leaves it open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response, status
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy.orm import Session

from api.deps import CHALLENGE, RuntimeDep, bearer_token, matching
from masterplan.db.models import Job, JobStatus, LLMCall, RunStatus, StageRun
from masterplan.llm.outcomes import SKIPS, CallOutcome
from masterplan.runtime import Runtime
from masterplan.settings import provider_chain

log = logging.getLogger(__name__)

# Seconds. LLM calls take 0.5-60 s; persona runs and jobs include waits for rate limits.
BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0)


Histogram = tuple[str, list[tuple[str, float]], float]


def _histogram(session: Session, label: Any, seconds: Any, *where: Any) -> list[Histogram]:
    """(label value, cumulative buckets, sum) per group, counted in SQL."""
    cols: list[Any] = [sa.func.count(), sa.func.coalesce(sa.func.sum(seconds), 0.0)]
    cols += [sa.func.count().filter(seconds <= le) for le in BUCKETS]
    rows = session.execute(sa.select(label, *cols).where(*where).group_by(label)).all()
    out = []
    for value, count, total, *under in rows:
        buckets = [(str(le), float(n)) for le, n in zip(BUCKETS, under, strict=True)]
        out.append((str(value), buckets + [("+Inf", float(count))], float(total)))
    return out


def _seconds_between(session: Session, start: Any, end: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return sa.extract("epoch", end - start)
    return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0


@dataclass
class _Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    waits: int = 0
    wait_ms: int = 0


class DatabaseCollector:
    """Jobs, stage runs and the LLM ledger, aggregated over every worker that ever wrote."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def collect(self) -> Iterator[Metric]:
        with self.rt.sessions() as s:
            yield from self._jobs(s)
            yield from self._ledger(s)
            yield from self._latencies(s)

    def _jobs(self, s: Session) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("masterplan_jobs", "Jobs by status.", labels=["status"])
        counts: dict[str, int] = dict(
            s.execute(sa.select(Job.status, sa.func.count()).group_by(Job.status)).all())
        for known in JobStatus:
            jobs.add_metric([known.value], counts.pop(known.value, 0))
        for other, n in counts.items():
            jobs.add_metric([other], n)
        yield jobs
        runs = GaugeMetricFamily("masterplan_stage_runs", "Stage runs by stage and status.",
                                 labels=["stage", "status"])
        for stage, run_status, n in s.execute(
            sa.select(StageRun.stage, StageRun.status, sa.func.count())
            .group_by(StageRun.stage, StageRun.status)
        ).all():
            runs.add_metric([stage, run_status], n)
        yield runs

    def _ledger(self, s: Session) -> Iterator[Metric]:
        c = LLMCall
        calls = CounterMetricFamily("masterplan_llm_calls", "LLM calls sent, by provider and "
                                    "outcome (ok, rate_limited, timeout, ...).",
                                    labels=["provider", "outcome"])
        skipped = CounterMetricFamily("masterplan_llm_skipped", "Providers passed over without a "
                                      "call: cooling down, bucket empty, or request too large.",
                                      labels=["provider", "reason"])
        limited = CounterMetricFamily("masterplan_llm_rate_limited", "429 responses received.",
                                      labels=["provider"])
        tokens = CounterMetricFamily("masterplan_llm_tokens", "Tokens billed, by provider and "
                                     "direction.", labels=["provider", "direction"])
        cost = CounterMetricFamily("masterplan_llm_cost_usd", "Cost in USD, by provider.",
                                   labels=["provider"])
        waits = CounterMetricFamily("masterplan_bucket_waits", "Steps put back to wait for a "
                                    "provider's token bucket or cooldown.", labels=["provider"])
        waited = CounterMetricFamily("masterplan_bucket_wait_seconds", "Time steps were put back "
                                     "to wait for a token bucket or cooldown.", labels=["provider"])
        rows = s.execute(
            sa.select(c.provider, c.outcome, sa.func.count(),
                      sa.func.coalesce(sa.func.sum(c.input_tokens), 0),
                      sa.func.coalesce(sa.func.sum(c.output_tokens), 0),
                      sa.func.coalesce(sa.func.sum(c.cost_usd), 0.0),
                      sa.func.coalesce(sa.func.sum(c.wait_ms), 0))
            .group_by(c.provider, c.outcome)
        ).all()
        per_provider: dict[str, _Totals] = {}
        for provider, outcome, n, tin, tout, usd, wait_ms in rows:
            totals = per_provider.setdefault(provider, _Totals())
            if outcome in SKIPS:
                skipped.add_metric([provider, outcome], n)
            elif outcome == CallOutcome.DEFERRED:
                totals.waits += n
                totals.wait_ms += int(wait_ms)
            else:
                calls.add_metric([provider, outcome], n)
                if outcome == CallOutcome.RATE_LIMITED:
                    limited.add_metric([provider], n)
            totals.input_tokens += int(tin)
            totals.output_tokens += int(tout)
            totals.cost_usd += float(usd)
        for provider, t in sorted(per_provider.items()):
            if provider == "-":  # a deferral with no provider to blame
                continue
            tokens.add_metric([provider, "input"], t.input_tokens)
            tokens.add_metric([provider, "output"], t.output_tokens)
            cost.add_metric([provider], t.cost_usd)
            waits.add_metric([provider], t.waits)
            waited.add_metric([provider], t.wait_ms / 1000)
        yield from (calls, skipped, limited, tokens, cost, waits, waited)
        fallbacks = CounterMetricFamily("masterplan_llm_fallbacks", "Calls answered by a provider "
                                        "after the one before it in the chain could not.",
                                        labels=["provider", "from_provider"])
        for provider, prev, n in s.execute(
            sa.select(c.provider, c.fallback_from, sa.func.count())
            .where(c.outcome == CallOutcome.OK, c.fallback_from.is_not(None))
            .group_by(c.provider, c.fallback_from)
        ).all():
            fallbacks.add_metric([provider, str(prev)], n)
        yield fallbacks

    def _latencies(self, s: Session) -> Iterator[Metric]:
        stage = HistogramMetricFamily(
            "masterplan_stage_latency_seconds", "Latency of the LLM call that answered each "
            "stage (the five personas, synthesis, critique).", labels=["stage"])
        for value, buckets, total in _histogram(s, LLMCall.stage, LLMCall.latency_ms / 1000.0,
                                                LLMCall.outcome == CallOutcome.OK):
            stage.add_metric([value], buckets, total)
        yield stage
        runs = HistogramMetricFamily(
            "masterplan_stage_duration_seconds", "Stage runs from first claim to result, "
            "waits for rate limits and fallbacks included.", labels=["stage"])
        run_s = _seconds_between(s, StageRun.started_at, StageRun.finished_at)
        for value, buckets, total in _histogram(
            s, StageRun.stage, run_s, StageRun.finished_at.is_not(None),
            StageRun.started_at.is_not(None),
            StageRun.status.in_((RunStatus.SUCCEEDED.value, RunStatus.FAILED.value)),
        ):
            runs.add_metric([value], buckets, total)
        yield runs
        job = HistogramMetricFamily("masterplan_job_duration_seconds", "Finished jobs from "
                                    "submission to result.", labels=["status"])
        job_s = _seconds_between(s, Job.created_at, Job.finished_at)
        for value, buckets, total in _histogram(s, Job.status, job_s, Job.finished_at.is_not(None)):
            job.add_metric([value], buckets, total)
        yield job


def _queue_keys(prefix: str, queue: str) -> list[str]:
    """kombu's Redis transport keeps one list per priority step: `name`, `name\\x06\\x163`, ...,
    each under the deployment's key prefix."""
    return [f"{prefix}{queue}" if p == 0 else f"{prefix}{queue}{RedisChannel.sep}{p}"
            for p in PRIORITY_STEPS]


class BrokerCollector:
    """Messages waiting in each queue, and those delivered to workers but not yet acknowledged."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def _client(self) -> tuple[Any, bool]:
        settings = self.rt.settings
        if settings.broker_url == settings.redis_url:
            return self.rt.redis, False
        import redis

        return redis.Redis.from_url(settings.broker_url, socket_timeout=5,
                                    socket_connect_timeout=2), True

    def collect(self) -> Iterator[Metric]:
        # Imported here: importing `workers` builds the Celery app from the environment.
        from workers.config import INTERACTIVE_QUEUE, PERSONA_QUEUE, PIPELINE_QUEUE

        prefix = f"{self.rt.settings.redis_key_prefix}:"
        keys = {queue: _queue_keys(prefix, queue)
                for queue in (INTERACTIVE_QUEUE, PERSONA_QUEUE, PIPELINE_QUEUE)}
        client, owned = self._client()
        try:
            pipe = client.pipeline(transaction=False)
            for key in (k for queue_keys in keys.values() for k in queue_keys):
                pipe.llen(key)
            pipe.hlen(prefix + RedisChannel.unacked_key)
            *lengths, unacked = pipe.execute()
        finally:
            if owned:
                client.close()
        depth = GaugeMetricFamily("masterplan_queue_depth", "Tasks waiting in each broker queue.",
                                  labels=["queue"])
        each = iter(lengths)
        for queue, queue_keys in keys.items():
            depth.add_metric([queue], sum(next(each) for _ in queue_keys))
        yield depth
        yield GaugeMetricFamily("masterplan_broker_unacked", "Tasks delivered to workers and not "
                                "yet acknowledged (running, reserved, or waiting for a retry "
                                "countdown).", value=unacked)


def daily_capped(runtime: Runtime) -> list[str]:
    """The providers of the chain with a daily cap (RPD, TPD), in chain order."""
    limiter = runtime.router.limiter
    return [name for name in provider_chain(runtime.settings)
            if (lim := limiter.limits_for(name)) is not None and lim.daily]


class LimiterCollector:
    """What is left of each provider's day (its RPD and TPD buckets in Redis), for providers with
    a daily cap: the figure that says when the chain will move to its next provider."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def collect(self) -> Iterator[Metric]:
        limiter = self.rt.router.limiter
        left = GaugeMetricFamily("masterplan_bucket_day_remaining", "What is left of a provider's "
                                 "daily cap (RPD, TPD), shared by every worker.",
                                 labels=["provider", "bucket"])
        capacity = GaugeMetricFamily("masterplan_bucket_day_capacity", "A provider's daily cap.",
                                     labels=["provider", "bucket"])
        resets = GaugeMetricFamily("masterplan_bucket_day_reset_seconds", "Seconds until a "
                                   "provider's day buckets are full again.", labels=["provider"])
        now_ms = time.time() * 1000
        for name in daily_capped(self.rt):
            st = limiter.status(name)
            for bucket, today, cap in (("tokens", st.tokens_today, st.token_day_capacity),
                                       ("requests", st.requests_today, st.request_day_capacity)):
                if today is not None and cap is not None:
                    left.add_metric([name, bucket], today)
                    capacity.add_metric([name, bucket], cap)
            if st.day_resets_at_ms is not None:
                resets.add_metric([name], max(0.0, (st.day_resets_at_ms - now_ms) / 1000))
        yield from (left, capacity, resets)


class _Scrape:
    """Every source's metrics, then `masterplan_metrics_source_up`. A source that fails is
    reported 0 there and left out, so a database hiccup does not hide the queue depth, nor the
    other way round."""

    def __init__(self, sources: dict[str, DatabaseCollector | BrokerCollector | LimiterCollector]
                 ) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("masterplan_metrics_source_up", "1 if the source answered this "
                               "scrape.", labels=["source"])
        for name, source in self.sources.items():
            try:
                metrics = list(source.collect())
            except Exception as exc:  # noqa: BLE001 - reported as a metric, and logged
                log.warning("metrics: %s unavailable: %s: %s", name, type(exc).__name__, exc)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from metrics
        yield up


def render(runtime: Runtime) -> bytes:
    """The Prometheus text exposition for this runtime's database and broker."""
    sources: dict[str, DatabaseCollector | BrokerCollector | LimiterCollector] = {
        "database": DatabaseCollector(runtime)}
    if runtime.settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        sources["broker"] = BrokerCollector(runtime)
    if daily_capped(runtime):
        sources["limiter"] = LimiterCollector(runtime)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(sources))
    return generate_latest(registry)


router = APIRouter(tags=["metrics"])


def metrics_access(request: Request, rt: RuntimeDep) -> None:
    settings = rt.settings
    if settings.auth_disabled:
        return
    if settings.metrics_token is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Not Found")
    token = bearer_token(request)
    if token is None or matching(token, [settings.metrics_token.get_secret_value()]) is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                            "/metrics needs `Authorization: Bearer <METRICS_TOKEN>`",
                            headers=CHALLENGE)


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_access)])
def metrics(rt: RuntimeDep) -> Response:
    """Prometheus scrape endpoint: `Authorization: Bearer <METRICS_TOKEN>`."""
    return Response(render(rt), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI) -> None:
    """Mount GET /metrics on the app (once)."""
    if getattr(app.state, "metrics_installed", False):
        return
    app.state.metrics_installed = True
    app.include_router(router)
