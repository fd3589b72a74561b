"""What the API reads of a request before it answers: the body cap is enforced while the body
is read, and a caller without a key is refused before any of it is read.

The app is called as an ASGI server would call it, with a `receive` that counts the body chunks
the app pulls, so "not read" is observed rather than inferred."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from tests.api.app_client import Api, api_client

LIMIT = 64 * 1024
CHUNK = 1024


@pytest.fixture
def api(pg_migrated: str) -> Iterator[Api]:
    with api_client(pg_migrated, {"MAX_REQUEST_BYTES": str(LIMIT)}) as a:
        yield a


def call(app: Any, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, dict[str, str], bytes, int]:
    """POST /v1/jobs with the body in `chunks`: (status, headers, body, chunks the app pulled)."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {"type": "http.request", "body": chunks[pulled - 1],
                    "more_body": pulled < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/jobs", "raw_path": b"/v1/jobs", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    anyio.run(app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    head = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], head, body, pulled


def body_chunks(total: int) -> list[bytes]:
    text = b'{"idea": "' + b"x" * (total - 12) + b'"}'
    return [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)]


def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_read(api: Api) -> None:
    chunks = body_chunks(10 * LIMIT)
    status, headers, body, pulled = call(api.client.app, api.auth | {
        "content-type": "application/json", "content-length": str(10 * LIMIT)}, chunks)

    assert (status, pulled) == (413, 0)
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert b'"status":413' in body and str(LIMIT).encode() in body
    assert api.jobs_stored() == 0


def test_a_chunked_body_is_cut_off_as_soon_as_it_passes_the_cap(api: Api) -> None:
    chunks = body_chunks(10 * LIMIT)  # no Content-Length: sent chunked
    status, headers, body, pulled = call(api.client.app, api.auth | {
        "content-type": "application/json"}, chunks)

    assert status == 413
    assert pulled == LIMIT // CHUNK + 1  # the chunk that passed the cap, and not one more
    assert headers["content-type"] == "application/problem+json"
    assert api.jobs_stored() == 0


def test_a_body_at_the_cap_is_read_whole(api: Api) -> None:
    chunks = body_chunks(LIMIT)
    status, _, body, pulled = call(api.client.app, api.auth | {
        "content-type": "application/json"}, chunks)

    # read to the end, then refused for the idea's own length, not for the body's size
    assert (status, pulled) == (422, len(chunks)), body
    assert b"20000" in body


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", "Basic dXNlcjpwYXNz"])
def test_a_caller_without_a_valid_key_is_refused_before_the_body_is_read(
        api: Api, authorization: str | None) -> None:
    headers = {"content-type": "application/json", "content-length": "2048"}
    if authorization:
        headers["authorization"] = authorization
    status, head, body, pulled = call(api.client.app, headers, body_chunks(2048))

    assert (status, pulled) == (401, 0)
    assert head["www-authenticate"] == "Bearer"
    assert b'"status":401' in body


def test_a_valid_request_in_many_chunks_is_accepted(api: Api) -> None:
    text = b'{"idea": "' + b"y" * 5000 + b'", "context": {"answers": "' + b"z" * 5000 + b'"}}'
    chunks = [text[i:i + 100] for i in range(0, len(text), 100)]
    status, head, body, pulled = call(api.client.app, api.auth | {
        "content-type": "application/json"}, chunks)

    assert (status, pulled) == (202, len(chunks)), body
    assert head["location"].startswith("/v1/jobs/")
