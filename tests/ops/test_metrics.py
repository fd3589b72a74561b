"""GET /metrics: what the database and the broker say, in Prometheus' text format."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from masterplan.db import queries as q
from masterplan.db.models import JobStatus, RunStatus, utcnow
from masterplan.llm.router import Attempt
from testkit.procs import free_port
from tests.conftest import _redis_url, make_settings
from tests.ops import flush_redis

REDIS_DB = 5
KEY = "metrics-key-0123456789"
TOKEN = "metrics-token-0123456789"
PERSONAS = ("market", "technical", "finance", "risk", "growth")


def _seed(rt: Any) -> None:
    """One finished job served partly by a fallback after a 429, and one still queued."""
    now = utcnow()
    with rt.sessions.begin() as s:
        done = q.create_job(s, owner="o", idea="finished", context=None, deadline_s=900)
        q.create_job(s, owner="o", idea="waiting", context=None, deadline_s=900)
        for persona in PERSONAS:
            q.claim_stage(s, job_id=done.id, stage=persona, claim_id=persona, lease_s=300)
            q.finish_stage(s, job_id=done.id, stage=persona, status=RunStatus.SUCCEEDED,
                           provider="google", latency_ms=800)
        q.record_calls(s, job_id=done.id, stage="market", attempts=[
            Attempt("groq", "llama", "skipped_ratelimit", wait_ms=700),
            Attempt("google", "gemini", "deferred", wait_ms=1500),
        ])
        q.record_calls(s, job_id=done.id, stage="market", attempts=[
            Attempt("groq", "llama", "rate_limited", latency_ms=90),
            Attempt("google", "gemini", "ok", 1500, 400, 0.0002, 800, fallback_from="groq"),
        ])
        for stage in (*PERSONAS[1:], "synthesis", "critique"):
            q.record_calls(s, job_id=done.id, stage=stage,
                           attempts=[Attempt("groq", "llama", "ok", 1000, 300, 0.0001, 3000)])
        q.update_job(s, job_id=done.id, status=JobStatus.SUCCEEDED.value,
                     finished_at=now + timedelta(seconds=12))


@pytest.fixture
def stack(any_db_url: str, redis_url: str) -> Iterator[Any]:
    """The API app with /metrics on a seeded database (SQLite, then PostgreSQL), and three
    persona and two pipeline tasks waiting on our Redis database, which no worker consumes."""
    from fastapi.testclient import TestClient

    from api.factory import create_app
    from api.metrics import install
    from masterplan.runtime import build_runtime
    from workers.config import celery_config

    flush_redis(REDIS_DB)
    settings = make_settings({"REDIS_URL": _redis_url(REDIS_DB), "DATABASE_URL": any_db_url,
                              "API_KEYS": KEY, "METRICS_TOKEN": TOKEN})
    rt = build_runtime(settings, migrate=True)
    _seed(rt)
    # the project's routing, on an app of our own (not the process's current one)
    producer = Celery("metrics-test", set_as_current=False)
    producer.conf.update(celery_config(settings))
    for persona in PERSONAS[:3]:
        producer.send_task("masterplan.stage", kwargs={"job_id": "x", "stage": persona},
                           queue="personas")
    for _ in range(2):
        producer.send_task("masterplan.stage", kwargs={"job_id": "x", "stage": "synthesis"},
                           queue="pipeline")
    producer.close()
    app = create_app(runtime=rt)
    install(app)
    install(app)  # idempotent: the factory may already have done it
    with TestClient(app) as client:
        yield client
    rt.close()


Samples = dict[tuple[str, tuple[Any, ...]], float]


def scrape(client: Any, key: str | None = TOKEN) -> Samples:
    r = client.get("/metrics", headers={"Authorization": f"Bearer {key}"} if key else {})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_need_the_metrics_token_not_an_api_key(stack: Any) -> None:
    assert stack.get("/metrics").status_code == 401
    assert stack.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    # every tenant's totals are not for a tenant's key
    assert stack.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 401


def test_metrics_report_jobs_calls_costs_waits_and_queues(stack: Any) -> None:
    m = scrape(stack)

    def v(name: str, **labels: str) -> float:
        return m[(name, tuple(sorted(labels.items())))]

    assert v("masterplan_jobs", status="succeeded") == 1
    assert v("masterplan_jobs", status="queued") == 1
    assert v("masterplan_jobs", status="failed") == 0
    assert v("masterplan_stage_runs", stage="market", status="succeeded") == 1
    assert v("masterplan_stage_runs", stage="market", status="pending") == 1

    assert v("masterplan_llm_calls_total", provider="groq", outcome="ok") == 6
    assert v("masterplan_llm_calls_total", provider="groq", outcome="rate_limited") == 1
    assert v("masterplan_llm_calls_total", provider="google", outcome="ok") == 1
    assert v("masterplan_llm_rate_limited_total", provider="groq") == 1
    assert v("masterplan_llm_skipped_total", provider="groq", reason="skipped_ratelimit") == 1
    assert v("masterplan_llm_fallbacks_total", provider="google", from_provider="groq") == 1
    assert v("masterplan_llm_tokens_total", provider="groq", direction="input") == 6000
    assert v("masterplan_llm_tokens_total", provider="google", direction="output") == 400
    assert v("masterplan_llm_cost_usd_total", provider="groq") == pytest.approx(0.0006)
    assert v("masterplan_bucket_waits_total", provider="google") == 1
    assert v("masterplan_bucket_wait_seconds_total", provider="google") == 1.5

    # the stage histogram counts the call that answered: 0.8 s for market, 3 s for the others
    assert v("masterplan_stage_latency_seconds_count", stage="market") == 1
    assert v("masterplan_stage_latency_seconds_bucket", stage="market", le="1.0") == 1
    assert v("masterplan_stage_latency_seconds_bucket", stage="synthesis", le="2.5") == 0
    assert v("masterplan_stage_latency_seconds_bucket", stage="synthesis", le="5.0") == 1
    assert v("masterplan_stage_latency_seconds_sum", stage="synthesis") == 3.0
    assert v("masterplan_stage_duration_seconds_count", stage="risk") == 1
    assert v("masterplan_job_duration_seconds_count", status="succeeded") == 1
    assert v("masterplan_job_duration_seconds_bucket", status="succeeded", le="10.0") == 0
    assert v("masterplan_job_duration_seconds_bucket", status="succeeded", le="20.0") == 1

    # queue depth from Redis, routed by the project's own configuration
    assert v("masterplan_queue_depth", queue="personas") == 3
    assert v("masterplan_queue_depth", queue="pipeline") == 2
    assert v("masterplan_broker_unacked") == 0
    assert v("masterplan_metrics_source_up", source="database") == 1
    assert v("masterplan_metrics_source_up", source="broker") == 1


def test_an_unreachable_broker_is_reported_and_the_rest_still_served(any_db_url: str) -> None:
    from fastapi.testclient import TestClient

    from api.factory import create_app
    from api.metrics import install
    from masterplan.runtime import build_runtime

    settings = make_settings({"REDIS_URL": _redis_url(REDIS_DB), "DATABASE_URL": any_db_url,
                              "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
                              "AUTH_DISABLED": "true"})
    rt = build_runtime(settings, migrate=True)
    app = create_app(runtime=rt)
    install(app)
    with TestClient(app) as client:
        m = scrape(client, key=None)  # AUTH_DISABLED: open
    rt.close()
    assert m[("masterplan_metrics_source_up", (("source", "broker"),))] == 0
    assert m[("masterplan_metrics_source_up", (("source", "database"),))] == 1
    assert m[("masterplan_jobs", (("status", "queued"),))] == 0
    assert not [k for k in m if k[0] == "masterplan_queue_depth"]
