"""The live API process (`uvicorn api.main:app`) against its own OpenAPI document and against
clients that misbehave on the wire.

Schemathesis generates a couple of hundred requests per operation from the document the process
serves, valid and invalid, and checks every answer: no server error, a status the operation
documents, the documented content type, headers and body schema, invalid input refused, valid
input accepted, an operation without its key refused. No worker runs: jobs stay queued.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from testkit.procs import BIN, Proc, clean_env, free_port, wait_http
from tests.conftest import RUN_PREFIX, UNLIMITED_KEYS, _redis_url, fresh_pg_database

pytestmark = pytest.mark.slow

KEY = f"contract-key-{uuid.uuid4().hex}"
OTHER_KEY = f"contract-key-{uuid.uuid4().hex}"
METRICS_TOKEN = f"contract-metrics-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_REQUEST_BYTES = 256 * 1024
EXAMPLES_PER_OPERATION = 200


@dataclass
class LiveApi:
    base: str
    port: int
    db_url: str
    proc: Proc
    tally: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def live_api(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """The API as deployed: its own process, a fresh migrated PostgreSQL database, Redis db 4
    under a prefix of this run's."""
    from masterplan.db.session import make_engine, upgrade

    with fresh_pg_database("mp_contract") as db_url:
        engine = make_engine(db_url)
        upgrade(engine)
        engine.dispose()
        port = free_port()
        env = clean_env(DATABASE_URL=db_url, REDIS_URL=_redis_url(4),
                        REDIS_KEY_PREFIX=f"{RUN_PREFIX}-contract", API_KEYS=f"{KEY},{OTHER_KEY}",
                        METRICS_TOKEN=METRICS_TOKEN, LOG_LEVEL="INFO",
                        # Hundreds of submissions from one key: its limits would answer most.
                        **UNLIMITED_KEYS)
        log = tmp_path_factory.mktemp("contract") / "api.log"
        proc = Proc([str(BIN / "uvicorn"), "api.main:app", "--host", "127.0.0.1", "--port", str(port)],
                    env, log)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)
            live = LiveApi(f"http://127.0.0.1:{port}", port, db_url, proc)
            yield live
        finally:
            proc.stop()
        if live.tally:
            print("\nschemathesis:", len(live.tally), "operations,", sum(live.tally.values()),
                  "examples:", dict(live.tally))
            print("statuses:", {op: dict(c) for op, c in live.statuses.items()})


def _exercise(schema: Any, operation: Any, live: LiveApi) -> None:
    """One operation through Schemathesis' phases: the document's examples, boundary values of
    every constraint (coverage), then generated requests, valid and invalid (fuzzing); each answer
    through every check.

    The test is built the way Schemathesis' pytest plugin builds it; the plugin itself cannot be
    used here, as it writes `Node._nodeid`, which pytest 9.2 no longer has."""
    from schemathesis.generation.feedback import FeedbackSources
    from schemathesis.pytest._test_builder import build_operation_test

    def check(case: Any) -> None:
        response = case.call_and_validate(timeout=30)
        live.tally[operation.label] += 1
        live.statuses.setdefault(operation.label, Counter())[response.status_code] += 1

    test = build_operation_test(
        config=schema.config, operation=operation, test_func=check, given_kwargs={},
        feedback=FeedbackSources(),
        explicit_settings=settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
                                   database=None, suppress_health_check=list(HealthCheck)))
    test()


def test_the_live_api_keeps_its_documented_contract(live_api: LiveApi) -> None:
    """Every check Schemathesis has, on every operation of the document the process serves."""
    # The key as the credential of the document's `bearer` scheme: Schemathesis then sends it
    # where the document asks for it, and also probes each operation without it and with a wrong
    # one. A body past MAX_REQUEST_BYTES is refused with the documented 413, which Schemathesis
    # does not count as a refusal by default.
    refusals = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
    config = schemathesis.Config.from_dict({
        "auth": {"openapi": {"bearer": {"bearer": KEY}}},
        "checks": {"negative_data_rejection": {"expected-statuses": refusals}},
    })
    schema = schemathesis.openapi.from_url(f"{live_api.base}/openapi.json", config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    failures: dict[str, str] = {}
    for operation in operations:
        try:
            _exercise(schema, operation, live_api)
        except Exception as exc:  # noqa: BLE001 - every operation is tried; all are reported
            failures[operation.label] = str(exc)[:3000]

    assert len(operations) >= 8
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert all(live_api.tally[op.label] for op in operations)


def _raw(port: int, head: bytes, body: bytes, *, read_timeout: float = 10) -> tuple[int, bytes]:
    """Send `head` and part of a body on a plain socket, never the rest; read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        try:
            s.sendall(head + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking all of it: the answer is there
        data = b""
        deadline = time.monotonic() + read_timeout
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head_end = data.index(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in data[:head_end].split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(data) < head_end + 4 + length and time.monotonic() < deadline:
            data += s.recv(65536)
    return int(data.split(b" ")[1]), data[head_end + 4:]


def test_an_oversized_declared_body_is_refused_without_waiting_for_it(live_api: LiveApi) -> None:
    """10 MB announced, 64 KB sent: a 413 comes back at once, the rest is never asked for."""
    head = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 10485760\r\n\r\n")
    started = time.monotonic()
    status, body = _raw(live_api.port, head, b"x" * 65536)

    assert status == 413 and json.loads(body)["status"] == 413
    assert time.monotonic() - started < 5


def test_a_chunked_body_past_the_cap_is_refused_while_it_is_sent(live_api: LiveApi) -> None:
    head = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 16384
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_REQUEST_BYTES // 16384 + 2))
    status, answer = _raw(live_api.port, head, body)  # and no terminating chunk

    assert status == 413 and json.loads(answer)["title"] == "Content Too Large"


def test_a_caller_without_a_key_gets_a_401_before_sending_its_body(live_api: LiveApi) -> None:
    head = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200000\r\n\r\n")
    status, body = _raw(live_api.port, head, b'{"idea": "')

    assert status == 401 and "Authorization: Bearer" in json.loads(body)["detail"]


def test_concurrent_replays_of_one_idempotent_submission_make_one_job(live_api: LiveApi) -> None:
    key = {"Idempotency-Key": f"race-{uuid.uuid4().hex}"}
    body = {"idea": "one job however often it is sent", "context": {"try": 1}}
    answers: list[httpx.Response] = []
    gate = threading.Barrier(8)

    def submit() -> None:
        with httpx.Client(base_url=live_api.base, timeout=30) as c:
            gate.wait()
            answers.append(c.post("/v1/jobs", json=body, headers=AUTH | key))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    codes = Counter(r.status_code for r in answers)
    assert set(codes) <= {200, 202, 409} and codes[202] == 1, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers if r.status_code in (200, 202)}) == 1
    import sqlalchemy as sa

    from masterplan.db.session import make_engine

    engine = make_engine(live_api.db_url)
    with engine.connect() as conn:
        stored = conn.scalar(sa.text("SELECT count(*) FROM jobs WHERE idempotency_key = :k"),
                             {"k": key["Idempotency-Key"]})
    engine.dispose()
    assert stored == 1


def test_secrets_never_appear_in_logs_errors_or_answers(live_api: LiveApi) -> None:
    with httpx.Client(base_url=live_api.base, timeout=10) as c:
        answers = [
            c.get("/v1/jobs", headers={"Authorization": f"Bearer {KEY}x"}),
            c.get("/metrics", headers=AUTH),
            c.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}),
            c.post("/v1/jobs", json={"idea": ""}, headers=AUTH),
            c.get("/v1/providers", headers=AUTH),
            c.get("/openapi.json"),
        ]
    assert [r.status_code for r in answers] == [401, 401, 200, 422, 200, 200]
    log = live_api.proc.output()
    for secret in (KEY, OTHER_KEY, METRICS_TOKEN):
        assert secret not in log
        for r in answers:
            assert secret not in r.text and secret not in str(r.headers)


def test_the_process_logged_no_server_error(live_api: LiveApi) -> None:
    """Over all the traffic of this module so far (pytest runs a module's tests in order)."""
    log = live_api.proc.output()
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]
