"""Fair share across keys through the HTTP API and a real worker: a key's burst waits in the
database, another key's job goes in at once, and submissions are limited per key."""

from __future__ import annotations

import uuid
from datetime import datetime

from masterplan.db import queries as q
from tests.integration.conftest import Stack


def _keys() -> tuple[dict[str, str], dict[str, str], str]:
    """Fresh keys, so that no other test's open jobs count against them."""
    a, b = (f"fair-{n}-{uuid.uuid4().hex}" for n in "ab")
    return {"Authorization": f"Bearer {a}"}, {"Authorization": f"Bearer {b}"}, f"{a},{b}"


def _most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_a_burst_waits_its_turn_and_another_keys_job_goes_in_at_once(make_stack) -> None:
    a, b, keys = _keys()
    stack: Stack = make_stack({"API_KEYS": keys, "KEY_MAX_JOBS_IN_FLIGHT": "2",
                               "STUB_LATENCY_MS": "400"})
    burst = []
    for i in range(5):
        r = stack.client.post("/v1/jobs", json={"idea": f"burst idea {i}"}, headers=a)
        assert r.status_code == 202, r.text
        burst.append(r.json()["id"])
    r = stack.client.post("/v1/jobs", json={"idea": "the other key's idea"}, headers=b)
    assert r.status_code == 202
    other = r.json()["id"]
    with stack.runtime.sessions() as s:
        admitted = {j: q.get_job(s, job_id=j).admitted_at is not None for j in [*burst, other]}
    # Each job takes at least three 400 ms calls: nothing has ended yet.
    assert [admitted[j] for j in burst] == [True, True, False, False, False]
    assert admitted[other]
    waiting = stack.client.get(f"/v1/jobs/{burst[4]}", headers=a).json()
    assert (waiting["status"], waiting["admitted_at"]) == ("queued", None)

    done = {j: stack.wait(j, timeout=90, headers=a) for j in burst}
    assert all(job["status"] == "succeeded" for job in done.values())
    assert stack.wait(other, headers=b)["status"] == "succeeded"
    with stack.runtime.sessions() as s:
        jobs = [q.get_job(s, job_id=j) for j in burst]
    assert _most_at_once([(j.admitted_at, j.finished_at) for j in jobs]) == 2
    # A key's own jobs are let in first come, first served.
    assert sorted(jobs, key=lambda j: j.admitted_at) == jobs


def test_submissions_beyond_the_per_minute_limit_get_429_and_store_nothing(make_stack) -> None:
    a, b, keys = _keys()
    stack: Stack = make_stack({"API_KEYS": keys, "KEY_SUBMISSIONS_PER_MIN": "3"})
    first = stack.client.post("/v1/jobs", json={"idea": "idea 0"},
                              headers={**a, "Idempotency-Key": "sub-0"})
    assert first.status_code == 202
    for i in (1, 2):
        assert stack.client.post("/v1/jobs", json={"idea": f"idea {i}"}, headers=a).status_code == 202

    r = stack.client.post("/v1/jobs", json={"idea": "one too many"}, headers=a)

    assert r.status_code == 429
    assert r.headers["content-type"] == "application/problem+json"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert "KEY_SUBMISSIONS_PER_MIN" in r.json()["detail"]
    assert len(stack.client.get("/v1/jobs", headers=a).json()["items"]) == 3
    # A retry of a stored submission is answered, and the other key is not limited.
    again = stack.client.post("/v1/jobs", json={"idea": "idea 0"},
                              headers={**a, "Idempotency-Key": "sub-0"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert stack.client.post("/v1/jobs", json={"idea": "b's idea"}, headers=b).status_code == 202
    for job in stack.client.get("/v1/jobs", headers=a).json()["items"]:
        stack.wait(job["id"], headers=a)
