"""The page routes and GET /v1/jobs/{id}/calls through the real app (no browser): who may read
what, what the server escapes, the headers it sends, what a finished job's page holds."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from html.parser import HTMLParser
from typing import Any

import pytest
from markupsafe import escape

from api.deps import ANONYMOUS, owner_of
from api.web.render import CSP
from masterplan.db.models import JobStatus
from tests.api.app_client import Api, api_client
from tests.web.jobs import IDEA, call, outputs, store_job

MISSING = "4b6f0c1e-0f43-4a8e-9d59-6d1cfb0b3b1a"


@pytest.fixture
def api(pg_migrated: str) -> Iterator[Api]:
    with api_client(pg_migrated) as a:
        yield a


@pytest.fixture
def open_api(pg_migrated: str) -> Iterator[Api]:
    """AUTH_DISABLED=true: every caller is `anonymous`, and the server renders pages whole."""
    with api_client(pg_migrated, {"AUTH_DISABLED": "true"}) as a:
        yield a


class Tags(HTMLParser):
    """Every start tag of a document, with its attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def by_id(self, id_: str) -> dict[str, str | None]:
        return next(a for _, a in self.tags if a.get("id") == id_)


def section(html: str, element_id: str) -> str:
    """The HTML from the element with that id up to the next card or section."""
    start = html.index(f'id="{element_id}"')
    nxt = re.compile(r'<(article|section) ').search(html, start)
    return html[start:nxt.start() if nxt else len(html)]


def test_calls_lists_every_attempt_with_its_start_and_end_to_its_owner_only(api: Api) -> None:
    t0 = time.time() - 20
    job = store_job(api.runtime, owner=owner_of(api.key), calls={
        "market": [call("anthropic", "server_error", started=t0, latency_ms=120,
                        error="overloaded (503): try later"),
                   call("google", started=t0 + 0.2, latency_ms=900, fallback_from="anthropic")],
        "synthesis": [call("google", started=0, latency_ms=1500)],  # a row from before start times
    })

    r = api.client.get(f"/v1/jobs/{job.id}/calls", headers=api.auth)

    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [(c["stage"], c["provider"], c["outcome"]) for c in items[:2]] == [
        ("market", "anthropic", "server_error"), ("market", "google", "ok")]
    failed, ok = items[0], items[1]
    assert failed["error"] == "overloaded (503): try later" and ok["fallback_from"] == "anthropic"
    assert (ok["input_tokens"], ok["output_tokens"], ok["cost_usd"], ok["latency_ms"]) == (
        1500, 400, 0.0012, 900)
    start, end = (datetime.fromisoformat(ok[k]) for k in ("started_at", "ended_at"))
    assert abs(start.timestamp() - (t0 + 0.2)) < 0.01
    assert (end - start).total_seconds() == pytest.approx(0.9)
    old = next(c for c in items if c["stage"] == "synthesis")
    assert old["started_estimated"] and not ok["started_estimated"]
    assert (datetime.fromisoformat(old["ended_at"]) - datetime.fromisoformat(old["started_at"])
            ).total_seconds() == pytest.approx(1.5)

    other = {"Authorization": f"Bearer {api.other_key}"}
    assert api.client.get(f"/v1/jobs/{job.id}/calls", headers=other).status_code == 404
    assert api.client.get(f"/v1/jobs/{MISSING}/calls", headers=api.auth).status_code == 404
    assert api.client.get(f"/v1/jobs/{job.id}/calls").status_code == 401


def test_a_stage_answered_by_a_later_provider_shows_a_fallback_badge_with_the_reason(api: Api) -> None:
    t0 = time.time() - 20
    calls = {stage: [call("anthropic", started=t0)] for stage in outputs()}
    calls["market"] = [
        call("anthropic", "server_error", started=t0, latency_ms=80, error="overloaded (503)"),
        call("google", started=t0 + 0.1, fallback_from="anthropic")]
    calls["growth"] = [  # the first provider repaired its own answer: no fallback
        call("anthropic", "invalid_output", started=t0, error="not JSON"),
        call("anthropic", started=t0 + 0.5)]
    job = store_job(api.runtime, owner=owner_of(api.key), calls=calls)

    html = api.client.get(f"/fragments/jobs/{job.id}", headers=api.auth).text

    market = section(html, "card-market")
    assert 'class="badge fallback"' in market
    assert "anthropic: server error — overloaded (503)" in market
    assert "<dd>google</dd>" in market
    for stage in ("technical", "growth", "synthesis", "critique"):
        assert "badge fallback" not in section(html, f"card-{stage}"), stage


def test_markup_in_the_idea_and_in_model_output_is_shown_as_text(api: Api) -> None:
    found = outputs()
    found["market"] = {**found["market"], "summary": "<script>alert(1)</script> cheap pipettes"}
    found["synthesis"] = {**found["synthesis"], "data_flow": '<img src=x onerror="alert(2)">'}
    idea = "<b>lab</b> gear & </textarea><script>alert(3)</script>"
    job = store_job(api.runtime, owner=owner_of(api.key), idea=idea, finished=found)

    html = api.client.get(f"/fragments/jobs/{job.id}", headers=api.auth).text

    assert "&lt;script&gt;alert(1)&lt;/script&gt; cheap pipettes" in html
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in html
    assert "&lt;b&gt;lab&lt;/b&gt; gear &amp; &lt;/textarea&gt;&lt;script&gt;alert(3)" in html
    assert not [t for t, _ in Tags(html).tags if t in ("script", "img", "b")]


def test_pages_and_fragments_send_the_policy_and_hold_no_inline_script_or_style(api: Api) -> None:
    job = store_job(api.runtime, owner=owner_of(api.key))
    answers = [api.client.get("/"), api.client.get(f"/jobs/{job.id}"),
               api.client.get(f"/fragments/jobs/{job.id}", headers=api.auth),
               api.client.get("/fragments/jobs", headers=api.auth)]

    for r in answers:
        assert r.status_code == 200, r.text
        assert r.headers["content-security-policy"] == CSP
        assert "script-src 'self';" in CSP and "'unsafe-inline'" not in CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"
        for tag, attrs in Tags(r.text).tags:
            assert tag != "style" and "style" not in attrs, (tag, attrs)
            assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
            if tag == "script":
                assert attrs.get("src") == "/static/app.js"
    assert api.client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert "sessionStorage" in api.client.get("/static/app.js").text
    assert api.client.get("/static/app.css").status_code == 200


def test_fragments_need_the_key_and_show_only_its_own_jobs(api: Api) -> None:
    job = store_job(api.runtime, owner=owner_of(api.key))
    other = {"Authorization": f"Bearer {api.other_key}"}

    assert api.client.get(f"/fragments/jobs/{job.id}").status_code == 401
    assert api.client.get("/fragments/jobs").status_code == 401
    r = api.client.get(f"/fragments/jobs/{job.id}", headers=other)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert job.id not in api.client.get("/fragments/jobs", headers=other).text
    mine = api.client.get("/fragments/jobs", headers=api.auth).text
    assert f'href="/jobs/{job.id}"' in mine
    assert "$0.0084" in mine  # the seven stages' calls at $0.0012 each
    # With keys required, the page itself carries nothing of the job: the script fetches it.
    shell = api.client.get(f"/jobs/{job.id}")
    assert shell.status_code == 200 and IDEA not in shell.text
    assert '<body data-auth="required"' in shell.text


def test_without_authentication_a_finished_job_is_rendered_whole(open_api: Api) -> None:
    job = store_job(open_api.runtime, owner=ANONYMOUS)
    plan, verdict = outputs()["synthesis"], outputs()["critique"]

    page = open_api.client.get(f"/jobs/{job.id}")
    index = open_api.client.get("/")

    assert page.status_code == 200
    html = page.text
    tags = Tags(html)
    assert tags.by_id("job")["data-status"] == "succeeded"
    for c in plan["components"]:
        assert escape(c["name"]) in section(html, "masterplan")
    assert escape(plan["data_flow"]) in html and escape(plan["roadmap"][0]["name"]) in html
    assert f"score {verdict['score']}/10" in section(html, "verdict")
    assert 'id="timeline"' in html and html.count('class="bar o-ok"') == 7
    assert f'href="/jobs/{job.id}"' in index.text and 'data-auth="disabled"' in index.text
    assert 'id="key-form"' not in index.text
    assert open_api.client.get(f"/jobs/{MISSING}").status_code == 404
    assert open_api.client.get("/jobs/not-a-job").status_code == 404


def test_a_failed_job_shows_why_and_the_results_it_kept(open_api: Api) -> None:
    found: dict[str, dict[str, Any] | None] = {
        k: v for k, v in outputs().items() if k in ("market", "technical")}
    found["finance"] = None
    error = "only 2 of 5 personas succeeded (MIN_PERSONAS=3)"
    job = store_job(open_api.runtime, owner=ANONYMOUS, finished=found, status=JobStatus.FAILED,
                    error=error)

    html = open_api.client.get(f"/jobs/{job.id}").text

    assert escape(error) in section(html, "job-head") and 'role="alert"' in section(html, "job-head")
    assert escape(outputs()["market"]["summary"]) in section(html, "card-market")
    assert Tags(html).by_id("card-finance")["data-status"] == "failed"
    assert "every provider failed" in section(html, "card-finance")
    assert Tags(html).by_id("card-risk")["data-status"] == "pending"
    assert 'id="masterplan"' not in html and 'id="verdict"' not in html


def test_the_document_has_the_calls_route_and_not_the_pages(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()

    op = doc["paths"]["/v1/jobs/{job_id}/calls"]["get"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CallList"}
    assert {"401", "404", "422", "503"} <= set(op["responses"])
    assert not [p for p in doc["paths"] if not p.startswith(("/v1/", "/healthz", "/readyz", "/metrics"))]
