"""Whole jobs through the HTTP API, a real worker, Redis and PostgreSQL."""

from __future__ import annotations

import pytest

from tests.integration.conftest import AUTH_A, AUTH_B, Stack


def test_a_submitted_job_runs_to_a_stored_masterplan(make_stack) -> None:
    stack: Stack = make_stack()
    r = stack.client.post("/v1/jobs", json={"idea": "  a marketplace for used lab equipment  ",
                                            "context": {"budget": "50k"}}, headers=AUTH_A)
    assert r.status_code == 202
    body = r.json()
    assert r.headers["location"] == f"/v1/jobs/{body['id']}"
    assert body["status"] in ("queued", "running")
    assert body["idea"] == "a marketplace for used lab equipment"

    job = stack.wait(body["id"])

    assert job["status"] == "succeeded", job["error"]
    assert not job["degraded"]
    assert [p["persona"] for p in job["personas"]] == ["market", "technical", "finance", "risk", "growth"]
    assert all(p["status"] == "succeeded" and p["provider"] == "stub" for p in job["personas"])
    assert "lab equipment" in job["personas"][0]["output"]["summary"]
    assert job["synthesis"]["roadmap"] and job["critique"]["verdict"]
    stages = {u["stage"] for u in job["usage"]["by_stage"]}
    assert stages == {"market", "technical", "finance", "risk", "growth", "synthesis", "critique"}
    assert job["usage"]["totals"]["input_tokens"] > 2000
    calls = stack.calls(body["id"])
    assert len(calls) == 7 and all(c.outcome == "ok" for c in calls)


def test_api_keys_own_their_jobs(make_stack) -> None:
    stack: Stack = make_stack()
    assert stack.client.post("/v1/jobs", json={"idea": "x"}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert stack.client.post("/v1/jobs", json={"idea": "x"}, headers=wrong).status_code == 401
    job_id = stack.submit("an idea of A's")

    assert stack.client.get(f"/v1/jobs/{job_id}", headers=AUTH_B).status_code == 404
    assert stack.client.get(f"/v1/jobs/{job_id}").status_code == 401
    mine = stack.client.get("/v1/jobs", headers=AUTH_A).json()["items"]
    theirs = stack.client.get("/v1/jobs", headers=AUTH_B).json()["items"]
    assert job_id in [j["id"] for j in mine]
    assert job_id not in [j["id"] for j in theirs]
    stack.wait(job_id)


def test_jobs_are_listed_newest_first_and_paginated(make_stack) -> None:
    stack: Stack = make_stack()
    ids = [stack.submit(f"idea number {i}") for i in range(3)]
    page1 = stack.client.get("/v1/jobs?limit=2", headers=AUTH_A).json()
    page2 = stack.client.get(f"/v1/jobs?limit=2&offset={page1['next_offset']}", headers=AUTH_A).json()
    listed = [j["id"] for j in page1["items"] + page2["items"]]
    assert listed[:3] == ids[::-1]
    assert page1["next_offset"] == 2
    for job_id in ids:
        stack.wait(job_id)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"idea": ""}, "idea", "empty"),
        ({"idea": "   \n\t "}, "idea", "whitespace"),
        ({"idea": "x" * 20_001}, "idea", "20000"),
        ({}, "idea", "required"),
        ({"idea": 42}, "idea", "string"),
        ({"idea": "ok", "colour": "red"}, "colour", "unknown field"),
        ({"idea": "ok", "context": "not an object"}, "context", "dictionary"),
    ],
)
def test_bad_input_gets_a_422_naming_the_field(make_stack, body, field, words) -> None:
    stack: Stack = make_stack()
    r = stack.client.post("/v1/jobs", json=body, headers=AUTH_A)
    assert r.status_code == 422
    problems = r.json()["errors"]
    assert any(p["field"] == field and words in p["message"].replace(",", "") for p in problems), problems


def test_malformed_json_gets_a_422(make_stack) -> None:
    stack: Stack = make_stack()
    r = stack.client.post("/v1/jobs", content=b'{"idea": "unterminated', headers=AUTH_A | {
        "content-type": "application/json"})
    assert r.status_code == 422
    assert "not valid JSON" in r.json()["detail"]


def test_health_and_readiness(make_stack) -> None:
    stack: Stack = make_stack()
    assert stack.client.get("/healthz").json() == {"status": "ok"}
    ready = stack.client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ok", "database": "ok", "broker": "ok"}


def test_an_idempotency_key_makes_a_retried_submission_return_the_first_job(make_stack) -> None:
    stack: Stack = make_stack()
    body = {"idea": "a retried submission"}
    key = {"Idempotency-Key": "req-7f3a"}
    first = stack.client.post("/v1/jobs", json=body, headers=AUTH_A | key)
    again = stack.client.post("/v1/jobs", json=body, headers=AUTH_A | key)

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    other_owner = stack.client.post("/v1/jobs", json=body, headers=AUTH_B | key)
    assert other_owner.status_code == 202 and other_owner.json()["id"] != first.json()["id"]
    changed = stack.client.post("/v1/jobs", json={"idea": "something else"}, headers=AUTH_A | key)
    assert changed.status_code == 409 and "different idea" in changed.json()["detail"]
    too_long = stack.client.post("/v1/jobs", json=body, headers=AUTH_A | {"Idempotency-Key": "k" * 129})
    assert too_long.status_code == 422
    stack.wait(first.json()["id"])
    stack.wait(other_owner.json()["id"], headers=AUTH_B)


def test_progress_streams_as_server_sent_events_until_the_job_is_done(make_stack) -> None:
    import json

    stack: Stack = make_stack({"STUB_LATENCY_MS": "150"})
    job_id = stack.submit("live progress please")
    events = []
    with stack.client.stream("GET", f"/v1/jobs/{job_id}/events", headers=AUTH_A) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    assert events[-1][0] == "done" and events[-1][1]["status"] == "succeeded"
    final = events[-1][1]["stages"]
    assert final["synthesis"] == final["critique"] == {"status": "succeeded", "provider": "stub"}
    assert len([e for e in events if e[0] == "progress"]) >= 2  # it changed while we watched
    assert stack.client.get(f"/v1/jobs/{job_id}/events", headers=AUTH_B).status_code == 404
