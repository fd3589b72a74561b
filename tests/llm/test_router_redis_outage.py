"""Redis trouble on either side of a provider call, caused for real on a redis-server of our own.

Before a call: the step is deferred (RetryLater), nobody is called unmetered. After a reply: the
bookkeeping is best effort and the reply, already paid for, is kept.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, ReadOnlyError, ResponseError
from redis.retry import Retry

from masterplan import errors as E
from masterplan.llm.base import LLMRequest, StreamEnd
from masterplan.llm.registry import build_router
from masterplan.llm.router import LIMITER_DOWN_WAIT_MS, Attempt, Router
from masterplan.personas import persona_request
from masterplan.ratelimit import reservation_tokens
from masterplan.ratelimit.limiter import redis_unavailable
from testkit.fake_provider import FakePrompt, FakeProvider, Responder, default_responder
from tests.conftest import make_settings, unavailable

REQ = persona_request("market", "a marketplace for used lab equipment", None)
GROQ_TPM = 20_000  # small enough that an unrefunded reservation shows in the bucket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server process of this test's own: killed with SIGKILL, restarted empty."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        probe = redis.Redis(port=self.port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    probe.ping()
                    return
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"redis-server on port {self.port} did not start")
                    time.sleep(0.02)
        finally:
            probe.close()

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, as when a machine or a container dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def client(self) -> Any:
        # The timeouts of masterplan.runtime.make_redis, but one retry without back-off: redis-py
        # 8's default (10 retries, jittered back-off) spends ~3.7 s on every refused command.
        return redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=2,
                           retry=Retry(NoBackoff(), 1))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server", "not found on PATH")
    server = RedisServer(_free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[Any]:
    c = redis_server.client()
    yield c
    c.close()


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeProvider]]:
    """Anthropic's SDK against one fake, the OpenAI SDK (as Groq) against the other; both send
    remaining-capacity headers, so a success also lowers our bucket."""
    with FakeProvider(flavor="anthropic", api_key="sk-ant", tpm=10_000_000, rpm=100_000) as a, \
            FakeProvider(flavor="groq", api_key="sk-grq", tpm=10_000_000, rpm=100_000) as q:
        yield {"anthropic": a, "groq": q}


def router_for(fakes: dict[str, FakeProvider], client: Any, chain: str = "anthropic,groq"
               ) -> Router:
    env = {
        "LLM_PROVIDERS": chain,
        "ANTHROPIC_BASE_URL": fakes["anthropic"].anthropic_base_url, "ANTHROPIC_API_KEY": "sk-ant",
        "ANTHROPIC_TPM": "10000000", "ANTHROPIC_RPM": "100000",
        "GROQ_BASE_URL": fakes["groq"].openai_base_url, "GROQ_API_KEY": "sk-grq",
        "GROQ_TPM": str(GROQ_TPM), "GROQ_RPM": "100000",
    }
    return build_router(make_settings(env), client)


def kills_redis_then(server: RedisServer, answer: Responder) -> Responder:
    """A responder that kills Redis on the fake's request thread, i.e. once the request has
    arrived and while the router waits for the reply, then answers."""
    def responder(prompt: FakePrompt) -> str | dict[str, Any]:
        server.kill()
        return answer(prompt)
    return responder


def crashes(prompt: FakePrompt) -> str:
    raise RuntimeError("the model crashed")  # the fake answers 500


def requests_sent(fakes: dict[str, FakeProvider]) -> int:
    return sum(f.count() for f in fakes.values())


def redis_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "Redis unavailable" in r.getMessage()]


# -- before a call: defer ----------------------------------------------------------------------

def test_redis_down_before_the_call_defers_and_calls_nobody(fakes, client, redis_server, caplog
                                                            ) -> None:
    router = router_for(fakes, client)
    redis_server.kill()

    with caplog.at_level(logging.WARNING), pytest.raises(E.RetryLater) as exc:
        router.route(REQ)

    assert exc.value.wait_ms == LIMITER_DOWN_WAIT_MS and "Redis" in exc.value.reason
    assert exc.value.attempts == []
    assert requests_sent(fakes) == 0
    assert "call deferred" in caplog.text


def test_a_read_only_redis_after_a_failover_defers_instead_of_failing(fakes, client) -> None:
    router = router_for(fakes, client)
    client.replicaof("127.0.0.1", _free_port())  # a replica of a master that is not there

    with pytest.raises(E.RetryLater) as exc:
        router.route(REQ)

    assert "ReadOnlyError" in exc.value.reason
    assert requests_sent(fakes) == 0


def test_only_outages_count_as_redis_unavailable() -> None:
    assert redis_unavailable(redis.ConnectionError("Connection refused"))
    assert redis_unavailable(redis.TimeoutError("Timeout reading from socket"))
    assert redis_unavailable(BusyLoadingError("Redis is loading the dataset in memory"))
    assert redis_unavailable(ReadOnlyError("You can't write against a read only replica."))
    assert redis_unavailable(ResponseError("MISCONF Redis is configured to save RDB snapshots"))
    assert redis_unavailable(ResponseError("LOADING Redis is loading the dataset in memory"))
    # A bug of ours is not an outage that will pass by waiting.
    assert not redis_unavailable(ResponseError("WRONGTYPE Operation against a key holding ..."))
    assert not redis_unavailable(ResponseError("ERR Error running script: bad argument"))


# -- after a reply: keep it --------------------------------------------------------------------

@pytest.mark.parametrize("provider", ["anthropic", "groq"])
def test_redis_dying_during_a_call_keeps_the_paid_reply(fakes, client, redis_server, caplog,
                                                        provider) -> None:
    router = router_for(fakes, client, chain=provider)
    router.cooldowns.failed(provider, "server_error")  # so the success also resets a count
    fakes[provider].responder = kills_redis_then(redis_server, default_responder)

    with caplog.at_level(logging.WARNING):
        routed = router.route(REQ)

    assert routed.completion.provider == provider and routed.completion.data is not None
    [row] = routed.attempts
    assert row.outcome == "ok" and row.input_tokens > 0 and row.output_tokens > 0
    assert row.cost_usd > 0
    warned = redis_warnings(caplog)
    assert warned and all(f"provider {provider}:" in w for w in warned)
    assert any("settlement" in w for w in warned)
    assert any("remaining capacity" in w for w in warned)
    assert any("failure count" in w for w in warned)


def test_a_429_while_redis_dies_keeps_its_row_and_the_next_provider_defers(
        fakes, client, redis_server, caplog) -> None:
    router = router_for(fakes, client)
    fakes["anthropic"].fail_next(status=429, retry_after_s=20)

    def redis_dies(n: int, *_: object) -> None:
        # The 429 comes back at once, so Redis dies between admission and the reply.
        if n == 0:
            redis_server.kill()

    with caplog.at_level(logging.WARNING), pytest.raises(E.RetryLater) as exc:
        router.route(REQ, before_call=redis_dies)

    assert exc.value.wait_ms == LIMITER_DOWN_WAIT_MS  # groq's admission found Redis down
    assert [(a.provider, a.outcome) for a in exc.value.attempts] == [("anthropic", "rate_limited")]
    assert (fakes["anthropic"].count(), fakes["groq"].count()) == (1, 0)
    warned = redis_warnings(caplog)
    assert any("drain" in w for w in warned) and any("cooldown" in w for w in warned)


def test_a_500_while_redis_dies_keeps_its_row_and_the_call_fails_cleanly(
        fakes, client, redis_server, caplog) -> None:
    router = router_for(fakes, client, chain="groq")
    fakes["groq"].responder = kills_redis_then(redis_server, crashes)

    with caplog.at_level(logging.WARNING), pytest.raises(E.AllProvidersFailed) as exc:
        router.route(REQ)

    assert [(a.provider, a.outcome) for a in exc.value.attempts] == [("groq", "server_error")]
    assert any("circuit breaker" in w for w in redis_warnings(caplog))


def test_the_stream_keeps_its_reply_when_redis_dies_mid_call(fakes, client, redis_server, caplog
                                                             ) -> None:
    router = router_for(fakes, client, chain="groq")
    fakes["groq"].responder = kills_redis_then(redis_server, default_responder)
    plain = LLMRequest("You are terse.", REQ.messages, max_tokens=200)
    attempts: list[Attempt] = []

    with caplog.at_level(logging.WARNING):
        items = list(router.stream(plain, attempts))

    assert isinstance(items[-1], StreamEnd) and "".join(i for i in items[:-1] if isinstance(i, str))
    assert [a.outcome for a in attempts] == ["ok"] and attempts[0].output_tokens > 0
    assert any("settlement" in w for w in redis_warnings(caplog))


def test_a_restarted_redis_is_used_again_without_rebuilding_the_router(fakes, client,
                                                                        redis_server) -> None:
    router = router_for(fakes, client)
    assert router.route(REQ).completion.provider == "anthropic"
    redis_server.kill()
    with pytest.raises(E.RetryLater):
        router.route(REQ)

    redis_server.start()  # a new, empty server on the same port: no scripts, no buckets

    assert router.route(REQ).completion.provider == "anthropic"
    assert fakes["anthropic"].count() == 2
    assert router.limiter.status("anthropic").tokens > 0  # the bucket exists again


# -- before_call -------------------------------------------------------------------------------

class Cancelled(Exception):
    pass


def test_before_call_stops_the_chain_after_the_first_failure(fakes, client) -> None:
    router = router_for(fakes, client)
    fakes["anthropic"].set_mode("down")
    seen: list[int] = []
    stop = Cancelled("job cancelled")

    def cancel_second(n: int, *_: object) -> None:
        seen.append(n)
        if n == 1:
            raise stop

    attempts: list[Attempt] = []
    with pytest.raises(Cancelled) as exc:
        router.route(REQ, before_call=cancel_second, attempts=attempts)

    assert exc.value is stop and seen == [0, 1]
    assert (fakes["anthropic"].count(), fakes["groq"].count()) == (1, 0)
    assert [(a.provider, a.outcome) for a in attempts] == [("anthropic", "timeout")]
    # Groq's reservation for the call that never happened was handed back.
    reserved = reservation_tokens(REQ.prompt_chars, REQ.max_tokens)
    assert router.limiter.status("groq").tokens > GROQ_TPM - reserved // 2


def test_before_call_counts_repairs_but_not_skipped_providers(fakes, client) -> None:
    router = router_for(fakes, client)
    router.cooldowns.rate_limited("anthropic", 30_000, "429")
    replies = iter(["{not json"])
    fakes["groq"].responder = lambda p: next(replies, None) or default_responder(p)
    seen: list[tuple[int, str, int]] = []

    completion = router.route(REQ, before_call=lambda n, cfg, r: seen.append((n, cfg.name, r.tokens))
                              ).completion

    # The call, then its repair (a longer prompt: the bad reply and the error are sent back).
    assert completion.provider == "groq" and [(n, name) for n, name, _ in seen] == [
        (0, "groq"), (1, "groq")]
    assert seen[1][2] > seen[0][2] == reservation_tokens(REQ.prompt_chars, REQ.max_tokens)
    assert fakes["anthropic"].count() == 0
    assert router.complete(REQ).provider == "groq"  # the Provider-shaped call still works
