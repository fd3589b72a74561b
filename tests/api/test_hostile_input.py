"""Hostile or careless input on the real API, on PostgreSQL: every such request is answered with
a 4xx problem (never a 500) and stores nothing; what is accepted can always be read back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.app_client import Api, api_client


@pytest.fixture
def api(pg_migrated: str) -> Iterator[Api]:
    with api_client(pg_migrated) as a:
        yield a


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep: {"a": {"a": ... {} }}."""
    out: dict[str, Any] = {}
    for _ in range(depth - 1):
        out = {"a": out}
    return out


def assert_problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["type"] == "about:blank"
    assert isinstance(body["title"], str) and isinstance(body["detail"], str)
    return body  # type: ignore[no-any-return]


def assert_refused(r: Any, field: str, words: str) -> None:
    body = assert_problem(r, 422)
    assert any(e["field"] == field and words in e["message"] for e in body["errors"]), body


# JSON text as a client could send it: escapes that Python's parser turns into NUL, lone
# surrogates and non-finite numbers.
REFUSED_BODIES = [
    pytest.param(b'{"idea": "a\\u0000b"}', "idea", "NUL", id="NUL in the idea"),
    pytest.param(b'{"idea": "a\\ud800b"}', "idea", "unpaired surrogate", id="lone high surrogate"),
    pytest.param(b'{"idea": "\\udc00 an idea"}', "idea", "unpaired surrogate", id="lone low surrogate"),
    pytest.param(b'{"idea": "ok", "context": {"a": "x\\u0000"}}', "context.a", "NUL", id="NUL in context"),
    pytest.param(b'{"idea": "ok", "context": {"a\\u0000": 1}}', "context.a\\x00", "NUL",
                 id="NUL in a context key"),
    pytest.param(b'{"idea": "ok", "context": {"k": ["\\udfff"]}}', "context.k.0", "unpaired surrogate",
                 id="lone surrogate in context"),
    pytest.param(b'{"idea": "ok", "context": {"x": NaN}}', "context.x", "finite", id="NaN"),
    pytest.param(b'{"idea": "ok", "context": {"x": [Infinity]}}', "context.x.0", "finite", id="Infinity"),
    pytest.param(b'{"idea": "ok", "context": {"x": -Infinity}}', "context.x", "finite", id="-Infinity"),
    pytest.param(b'{"idea": "ok", "context": {"x": 1e400}}', "context.x", "finite", id="1e400 overflows"),
    pytest.param(b'{"idea": "\xff\xfe not utf-8"}', "body", "not UTF-8", id="not UTF-8"),
    pytest.param(b'{"idea": "ok", "context": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "body",
                 "nested too deeply", id="nested past the parser"),
    pytest.param(b'{"idea": "ok", "context": {"n": ' + b"9" * 5000 + b"}}", "body", "not valid JSON",
                 id="5000-digit integer"),
]


@pytest.mark.parametrize(("body", "field", "words"), REFUSED_BODIES)
def test_text_and_numbers_that_cannot_be_stored_get_a_422_and_store_nothing(
        api: Api, body: bytes, field: str, words: str) -> None:
    r = api.post_raw(body)

    assert_refused(r, field, words)
    assert api.jobs_stored() == 0
    assert api.client.get("/v1/jobs", headers=api.auth).json()["items"] == []


@pytest.mark.parametrize(("context", "field", "words"), [
    pytest.param(nested(9), "context.a.a.a.a.a.a.a.a", "CONTEXT_MAX_DEPTH", id="9 levels"),
    pytest.param(nested(300), "context.a.a.a.a.a.a.a.a", "CONTEXT_MAX_DEPTH", id="300 levels"),
    pytest.param({"a": [[[[[[[[1]]]]]]]]}, "context.a.0.0.0.0.0.0.0", "CONTEXT_MAX_DEPTH",
                 id="arrays count as levels"),
    pytest.param({f"k{i}": 1 for i in range(201)}, "context", "CONTEXT_MAX_KEYS",
                 id="201 keys"),
    pytest.param({"answers": {f"k{i}": 1 for i in range(201)}}, "context.answers", "CONTEXT_MAX_KEYS",
                 id="201 keys nested"),
    pytest.param({"answer": "x" * 70_000}, "context", "CONTEXT_MAX_BYTES", id="70 KB"),
])
def test_a_context_past_its_limits_gets_a_422_naming_the_limit(
        api: Api, context: dict[str, Any], field: str, words: str) -> None:
    r = api.client.post("/v1/jobs", json={"idea": "an idea", "context": context}, headers=api.auth)

    assert_refused(r, field, words)
    assert api.jobs_stored() == 0


def test_a_context_at_its_limits_is_stored_and_read_back_unchanged(api: Api) -> None:
    context: dict[str, Any] = {
        "deep": nested(7),  # with the context itself: 8 levels, the limit
        "text": "naïve café, 数据, emoji 🚀 (a surrogate pair in JSON)",
        "numbers": [0, -1, 2**70, 1.5e308, -2.5e-308],
        "flags": [True, False, None],
        "answers": {f"q{i}": f"answer {i}" for i in range(200)},  # the limit of one object
        **{f"k{i}": i for i in range(195)},  # with the 5 above: 200 keys, the limit
    }
    assert len(context) == 200

    r = api.client.post("/v1/jobs", json={"idea": "  an idea at the limits  ", "context": context},
                        headers=api.auth)

    assert r.status_code == 202, r.text
    job = api.client.get(r.headers["location"], headers=api.auth)
    assert job.status_code == 200
    assert job.json()["context"] == context and job.json()["idea"] == "an idea at the limits"


@pytest.mark.parametrize("query", [
    "offset=9223372036854775808", "offset=1000001", "offset=-1", "offset=abc", "offset=" + "9" * 5000,
    "limit=0", "limit=101", "limit=1e3",
])
def test_paging_out_of_range_gets_a_422(api: Api, query: str) -> None:
    r = api.client.get(f"/v1/jobs?{query}", headers=api.auth)

    assert_refused(r, query.partition("=")[0], "")


def test_paging_at_its_bounds_answers(api: Api) -> None:
    r = api.client.get("/v1/jobs?offset=1000000&limit=100", headers=api.auth)

    assert r.status_code == 200 and r.json()["items"] == []


@pytest.mark.parametrize("path", ["/v1/jobs/%00", "/v1/jobs/not-a-uuid", "/v1/jobs/%ED%A0%80",
                                  "/v1/jobs/" + "a" * 5000, "/v1/jobs/%00/events"])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_job_id_that_is_not_a_uuid_gets_a_404_or_422(api: Api, path: str, method: str) -> None:
    r = api.client.request(method, path, headers=api.auth)

    assert r.status_code in (404, 422), r.text
    assert_problem(r, r.status_code)


@pytest.mark.parametrize("header", [b"Bearer \xe9t\xe9", b"Bearer \xff\xfe", b"\xe9", b"Bearer"])
def test_an_authorization_header_with_any_bytes_is_a_401(api: Api, header: bytes) -> None:
    for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/providers")):
        r = api.client.request(method, path, headers={"Authorization": header}, json={"idea": "x"})

        body = assert_problem(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
        assert "\xe9" not in body["detail"]  # what was sent is not echoed
    assert api.jobs_stored() == 0


@pytest.mark.parametrize("key", ["", " ", "k" * 129, "tab\tinside", "caf\xe9"])
def test_an_empty_overlong_or_unprintable_idempotency_key_is_a_422(api: Api, key: str) -> None:
    r = api.client.post("/v1/jobs", json={"idea": "an idea"},
                        headers=api.auth | {"Idempotency-Key": key.encode("latin-1")})

    assert_refused(r, "Idempotency-Key", "")
    assert api.jobs_stored() == 0


def test_an_idempotency_key_of_128_printable_characters_is_kept(api: Api) -> None:
    key = {"Idempotency-Key": "a-key with spaces and ~!@#" + "k" * 102}
    first = api.client.post("/v1/jobs", json={"idea": "an idea"}, headers=api.auth | key)
    again = api.client.post("/v1/jobs", json={"idea": "an idea"}, headers=api.auth | key)

    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"] and api.jobs_stored() == 1


def test_an_idempotency_key_expires_after_its_ttl_and_then_names_a_new_submission(api: Api) -> None:
    import sqlalchemy as sa

    from masterplan.db.models import Job

    key = {"Idempotency-Key": "monday-batch-1"}
    first = api.client.post("/v1/jobs", json={"idea": "an idea"}, headers=api.auth | key)
    other_body = api.client.post("/v1/jobs", json={"idea": "another idea"}, headers=api.auth | key)
    assert (first.status_code, other_body.status_code) == (202, 409)  # within the TTL

    # a day later (IDEMPOTENCY_TTL_S, 24 h by default)
    with api.runtime.sessions.begin() as s:
        s.execute(sa.update(Job).where(Job.id == first.json()["id"]).values(
            created_at=sa.func.now() - sa.text("interval '25 hours'")))
    later = api.client.post("/v1/jobs", json={"idea": "another idea"}, headers=api.auth | key)
    replay = api.client.post("/v1/jobs", json={"idea": "another idea"}, headers=api.auth | key)

    assert later.status_code == 202 and later.json()["id"] != first.json()["id"]
    assert replay.status_code == 200 and replay.json()["id"] == later.json()["id"]
    old = api.client.get(f"/v1/jobs/{first.json()['id']}", headers=api.auth)
    assert old.status_code == 200 and old.json()["idea"] == "an idea"  # the old job is kept
    assert api.jobs_stored() == 2


def test_every_refusal_leaves_the_jobs_readable(api: Api) -> None:
    """After a burst of everything above, the caller's list and each stored job still read."""
    for body, *_ in (p.values for p in REFUSED_BODIES):
        api.post_raw(body)
    ok = api.client.post("/v1/jobs", json={"idea": "the one good request"}, headers=api.auth)

    listed = api.client.get("/v1/jobs", headers=api.auth)
    assert listed.status_code == 200
    assert [j["id"] for j in listed.json()["items"]] == [ok.json()["id"]]
    assert api.client.get(f"/v1/jobs/{ok.json()['id']}", headers=api.auth).status_code == 200
