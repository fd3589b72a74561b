"""One error shape for the whole API, an OpenAPI document that says what the API answers, and the
operator surfaces (/metrics, /docs) shown only to whom they should be."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from api.validation import IDEA_PATTERN, WHITESPACE
from testkit.procs import free_port
from tests.api.app_client import Api, api_client

METRICS_TOKEN = "metrics-token-for-the-test-0123"


@pytest.fixture
def api(pg_migrated: str) -> Iterator[Api]:
    with api_client(pg_migrated, {"METRICS_TOKEN": METRICS_TOKEN}) as a:
        yield a


def problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert set(body) >= {"type", "title", "status", "detail"} and body["status"] == status
    return body  # type: ignore[no-any-return]


def test_every_kind_of_error_is_problem_details(api: Api) -> None:
    c, auth = api.client, api.auth
    assert "Authorization: Bearer" in problem(c.get("/v1/jobs"), 401)["detail"]
    wrong = {"Authorization": "Bearer nope"}
    assert problem(c.get("/v1/jobs", headers=wrong), 401)["title"] == "Unauthorized"
    missing = "4b6f0c1e-0f43-4a8e-9d59-6d1cfb0b3b1a"
    assert "for this API key" in problem(c.get(f"/v1/jobs/{missing}", headers=auth), 404)["detail"]
    problem(c.get("/no/such/route"), 404)
    not_allowed = c.put("/v1/jobs", headers=auth)
    problem(not_allowed, 405)
    assert not_allowed.headers["allow"] == "GET, POST"  # every method of the path, not one route's
    key = {"Idempotency-Key": "same-key"}
    c.post("/v1/jobs", json={"idea": "first"}, headers=auth | key)
    assert "different idea" in problem(c.post("/v1/jobs", json={"idea": "second"}, headers=auth | key),
                                       409)["detail"]
    too_big = c.post("/v1/jobs", content=b"x" * (300 * 1024), headers=auth)
    assert problem(too_big, 413)["title"] == "Content Too Large"
    invalid = problem(c.post("/v1/jobs", json={"idea": ""}, headers=auth), 422)
    assert invalid["errors"] == [{"field": "idea", "message": "must not be empty or only whitespace"}]
    assert invalid["detail"] == "idea: must not be empty or only whitespace"


def test_a_database_that_is_away_is_a_503_problem_with_retry_after(api: Api) -> None:
    from masterplan.db.session import make_engine, make_sessionmaker

    dead = make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/gone")
    api.runtime.sessions = make_sessionmaker(dead)
    try:
        r = api.client.get("/v1/jobs", headers=api.auth)
    finally:
        dead.dispose()

    assert "unavailable" in problem(r, 503)["detail"]
    assert r.headers["retry-after"] == "2"


def test_the_document_declares_the_bearer_scheme_on_every_operation_that_needs_a_key(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()

    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            needs_key = path.startswith("/v1/")
            assert bool(op.get("security")) == needs_key, (method, path)
            if needs_key:
                assert op["security"] == [{"bearer": []}]
                assert "WWW-Authenticate" in op["responses"]["401"]["headers"]


def test_every_documented_error_is_a_problem_with_its_real_body(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # FastAPI's shape, which the API never answers
    assert set(schemas["ValidationProblem"]["required"]) == {"type", "title", "status", "detail", "errors"}

    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            if op.get("parameters") or op.get("requestBody"):
                assert "422" in responses, (method, path)
            if path.startswith("/v1/"):
                assert "503" in responses and "Retry-After" in responses["503"]["headers"]
            for code, response in responses.items():
                if path == "/readyz" or int(code) < 400:
                    continue
                ref = response["content"]["application/problem+json"]["schema"]["$ref"]
                wanted = "ValidationProblem" if code == "422" else "Problem"
                assert ref == f"#/components/schemas/{wanted}", (method, path, code)


def test_post_v1_jobs_documents_each_answer_the_rules_and_examples(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    post = doc["paths"]["/v1/jobs"]["post"]

    assert set(post["responses"]) == {"200", "202", "401", "409", "413", "422", "429", "503"}
    assert "Retry-After" in post["responses"]["429"]["headers"]
    for code in ("200", "202"):
        assert post["responses"][code]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/JobPublic"}
        assert post["responses"][code]["headers"]["Location"]["required"] is True
    body = post["requestBody"]["content"]["application/json"]
    assert {"idea", "with_context"} <= set(body["examples"])
    idea = doc["components"]["schemas"]["JobCreate"]["properties"]["idea"]
    assert (idea["minLength"], idea["maxLength"], idea["pattern"]) == (1, 20_000, IDEA_PATTERN)
    key = next(p for p in post["parameters"] if p["name"] == "idempotency-key")
    assert key["schema"]["anyOf"][0]["minLength"] == 1
    context = doc["components"]["schemas"]["Context"]
    assert context["maxProperties"] == 200 and "8 levels" in context["description"]
    # eight levels: the context object, then ContextValue7 ... ContextValue0 (scalars only)
    assert "array" not in str(doc["components"]["schemas"]["ContextValue0"])
    assert "ContextValue7" in str(context)


def test_the_idea_pattern_is_the_rule_the_server_applies() -> None:
    """The document's pattern and the validator agree on what is blank, in any regex dialect."""
    assert set(WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}
    pattern = re.compile(IDEA_PATTERN)
    for blank in ["", *WHITESPACE, WHITESPACE, "\x00", "a\x00b"]:
        assert pattern.search(blank) is None, repr(blank)
    for fine in ["a", " a ", "\ufeff", "\u200b", "数据", "x\ny"]:
        assert pattern.search(fine), repr(fine)


def test_metrics_answer_only_to_the_metrics_token(api: Api) -> None:
    c = api.client
    assert problem(c.get("/metrics"), 401)["detail"].endswith("<METRICS_TOKEN>`")
    problem(c.get("/metrics", headers=api.auth), 401)  # a tenant's key sees no one's totals
    problem(c.get("/metrics", headers={"Authorization": "Bearer \xe9".encode("latin-1")}), 401)
    ok = c.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert ok.status_code == 200 and "masterplan_jobs" in ok.text
    assert METRICS_TOKEN not in ok.text


def test_without_a_metrics_token_metrics_do_not_exist(pg_migrated: str) -> None:
    with api_client(pg_migrated) as a:
        for headers in ({}, a.auth, {"Authorization": "Bearer anything"}):
            assert problem(a.client.get("/metrics", headers=headers), 404)["detail"] == "Not Found"


def test_docs_and_the_document_can_be_turned_off(pg_migrated: str) -> None:
    with api_client(pg_migrated, {"DOCS_ENABLED": "false"}) as a:
        for path in ("/docs", "/redoc", "/openapi.json"):
            problem(a.client.get(path), 404)
        assert a.client.get("/v1/jobs", headers=a.auth).status_code == 200
    with api_client(pg_migrated) as a:
        assert a.client.get("/docs").status_code == 200
        assert a.client.get("/openapi.json").json()["info"]["title"] == "Masterplan"
