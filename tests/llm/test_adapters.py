"""The adapters through the real `openai` and `anthropic` SDKs against the local fake provider."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from masterplan.errors import (
    AuthError,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from masterplan.llm.anthropic_provider import AnthropicProvider
from masterplan.llm.base import Completion, LLMRequest, Message, StreamEnd
from masterplan.llm.openai_compat import OpenAICompatProvider
from masterplan.llm.structured import strict_schema
from masterplan.personas import persona_request
from masterplan.schemas import PersonaOutput
from testkit.fake_provider import FakeProvider

IDEA = "A marketplace for refurbished laboratory equipment"
KEY = "sk-test"
FLAVORS = ("openai", "groq", "gemini", "anthropic")
OPENAI_FLAVORS = ("openai", "groq", "gemini")
SECRET = SecretStr(KEY)

Adapter = OpenAICompatProvider | AnthropicProvider


def request() -> LLMRequest:
    return persona_request("market", IDEA, {"stage": "pre-seed"})


def text_request() -> LLMRequest:
    return LLMRequest(system="Be brief.", messages=(Message("user", f"Startup idea:\n{IDEA}"),))


def adapter_for(
    fake: FakeProvider, key: SecretStr | None = SECRET, timeout_s: float = 10.0
) -> Adapter:
    if fake.flavor == "anthropic":
        return AnthropicProvider(
            "anthropic", "claude-test", fake.anthropic_base_url, key, timeout_s=timeout_s
        )
    base_url = fake.openai_base_url
    if fake.flavor == "gemini":  # Google serves the OpenAI-compatible API under this prefix
        base_url = fake.url + "/v1beta/openai/"
    return OpenAICompatProvider(fake.flavor, f"{fake.flavor}-model", base_url, key,
                                timeout_s=timeout_s)


@pytest.fixture(params=FLAVORS)
def fake(request: pytest.FixtureRequest) -> Iterator[FakeProvider]:
    # The fake checks keys on the OpenAI-style endpoint; for Anthropic see
    # test_anthropic_sends_the_stripped_key.
    key = None if request.param == "anthropic" else KEY
    with FakeProvider(flavor=request.param, api_key=key, tpm=200_000, rpm=100) as f:
        yield f


@pytest.fixture(params=OPENAI_FLAVORS)
def openai_fake(request: pytest.FixtureRequest) -> Iterator[FakeProvider]:
    with FakeProvider(flavor=request.param, api_key=KEY, tpm=200_000, rpm=100) as f:
        yield f


@pytest.fixture
def anthropic_fake() -> Iterator[FakeProvider]:
    with FakeProvider(flavor="anthropic", tpm=200_000, rpm=100) as f:
        yield f


def fails(adapter: Adapter, req: LLMRequest | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        adapter.complete(req or request())
    return info.value


# ------------------------------------------------------------------ success


def test_json_completion_validates(fake: FakeProvider) -> None:
    adapter = adapter_for(fake)
    done = adapter.complete(request())
    assert isinstance(done, Completion)
    out = PersonaOutput.model_validate_json(done.text)
    assert IDEA in out.summary
    assert done.provider == adapter.name
    assert done.model == adapter.model
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    assert done.request_id
    assert done.latency_ms >= 0
    assert done.data is None  # validation is the router's job
    assert fake.count() == 1


def test_remaining_capacity_reaches_the_completion(fake: FakeProvider) -> None:
    done = adapter_for(fake).complete(request())
    if fake.flavor == "gemini":
        assert done.rate_limit is None  # Google sends no remaining-capacity headers
        return
    assert done.rate_limit is not None
    assert done.rate_limit.remaining_requests == 99
    assert done.rate_limit.remaining_tokens is not None
    assert 0 < done.rate_limit.remaining_tokens < 200_000


def test_openai_request_shape(openai_fake: FakeProvider) -> None:
    req = request()
    adapter_for(openai_fake).complete(req)
    body = openai_fake.calls[-1].body
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "PersonaOutput", "schema": strict_schema(PersonaOutput), "strict": False}}
    assert body["messages"][0] == {"role": "system", "content": req.system}
    assert body["messages"][1]["role"] == "user"
    assert body["max_tokens"] == req.max_tokens
    assert body["temperature"] == req.temperature
    assert "stream" not in body


def test_openai_no_response_format_without_schema(openai_fake: FakeProvider) -> None:
    done = adapter_for(openai_fake).complete(text_request())
    assert "response_format" not in openai_fake.calls[-1].body
    assert IDEA in done.text


def test_openai_structured_output_modes(openai_fake: FakeProvider) -> None:
    url = openai_fake.openai_base_url
    strict = OpenAICompatProvider("x", "m", url, SecretStr(KEY), structured_output="json_schema",
                                  strict=True)
    PersonaOutput.model_validate_json(strict.complete(request()).text)
    fmt = openai_fake.calls[-1].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "PersonaOutput"
    assert fmt["json_schema"]["strict"] is True
    # JSON mode and the prompt alone: the honest fake does not fit a schema it was not sent.
    mode = OpenAICompatProvider("x", "m", url, SecretStr(KEY), structured_output="json_object")
    assert json.loads(mode.complete(request()).text)
    assert openai_fake.calls[-1].body["response_format"] == {"type": "json_object"}
    plain = OpenAICompatProvider("x", "m", url, SecretStr(KEY), structured_output="prompt")
    plain.complete(request())
    assert "response_format" not in openai_fake.calls[-1].body
    for wrong in ("yaml", "tool"):
        with pytest.raises(ValueError):
            OpenAICompatProvider("x", "m", url, SecretStr(KEY), structured_output=wrong)  # type: ignore[arg-type]


def test_anthropic_forced_tool_use(anthropic_fake: FakeProvider) -> None:
    req = request()
    done = adapter_for(anthropic_fake).complete(req)
    PersonaOutput.model_validate(json.loads(done.text))
    body = anthropic_fake.calls[-1].body
    assert body["tool_choice"] == {"type": "tool", "name": "PersonaOutput"}
    [tool] = body["tools"]
    assert tool["name"] == "PersonaOutput"
    assert tool["input_schema"] == PersonaOutput.model_json_schema()
    # The personas' shared prefix, marked for Anthropic's prompt cache.
    assert body["system"] == [{"type": "text", "text": req.system,
                               "cache_control": {"type": "ephemeral"}}]
    assert body["max_tokens"] == req.max_tokens
    assert "temperature" not in body


def test_anthropic_plain_text(anthropic_fake: FakeProvider) -> None:
    done = adapter_for(anthropic_fake).complete(text_request())
    assert "tools" not in anthropic_fake.calls[-1].body
    assert IDEA in done.text


def test_invalid_json_is_returned_not_judged(fake: FakeProvider) -> None:
    fake.set_mode("invalid_json")
    done = adapter_for(fake).complete(request())  # no raise: the router validates
    with pytest.raises(ValueError):
        PersonaOutput.model_validate_json(done.text)


# ------------------------------------------------------------------ keys


def test_key_with_trailing_newline_authenticates(openai_fake: FakeProvider) -> None:
    adapter = adapter_for(openai_fake, SecretStr(KEY + "\n"))
    PersonaOutput.model_validate_json(adapter.complete(request()).text)
    assert openai_fake.calls[-1].headers["authorization"] == f"Bearer {KEY}"


def test_anthropic_sends_the_stripped_key(anthropic_fake: FakeProvider) -> None:
    adapter_for(anthropic_fake, SecretStr(f"  {KEY}\n")).complete(request())
    headers = anthropic_fake.calls[-1].headers
    # anthropic SDK 2.x sends the API key as a bearer token, not as x-api-key
    sent = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
    assert sent == KEY


def test_wrong_key_is_auth_error_without_the_key(openai_fake: FakeProvider) -> None:
    wrong = "sk-wrong-0123456789abcdef"
    err = fails(adapter_for(openai_fake, SecretStr(wrong)))
    assert type(err) is AuthError
    assert err.status == 401
    assert wrong not in str(err) and wrong not in repr(err.args)
    assert openai_fake.count() == 1


def test_no_key_sends_a_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-environment")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-from-environment")
    with FakeProvider(flavor="openai") as f:  # a local server without auth
        adapter = OpenAICompatProvider("local", "llama3", f.openai_base_url, None)
        PersonaOutput.model_validate_json(adapter.complete(request()).text)
        headers = f.calls[-1].headers
    assert headers["authorization"] == "Bearer not-needed"
    assert "openai-organization" not in headers


def test_anthropic_no_key_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-environment")
    with FakeProvider(flavor="anthropic") as f:
        AnthropicProvider("local", "claude", f.anthropic_base_url, None).complete(request())
        headers = f.calls[-1].headers
    assert "sk-ant-from-environment" not in json.dumps(headers)


# ------------------------------------------------------------------ failures


@pytest.mark.parametrize("flavor", ["openai", "groq", "anthropic"])
def test_429_with_retry_headers(flavor: str) -> None:
    with FakeProvider(flavor=flavor) as fake:  # type: ignore[arg-type]
        check_429_with_retry_headers(fake)


def check_429_with_retry_headers(fake: FakeProvider) -> None:
    fake.fail_next(status=429, retry_after_s=2.5)
    err = fails(adapter_for(fake))
    assert type(err) is RateLimited
    assert err.retry_after_ms == 2500
    assert err.status == 429
    assert err.provider == adapter_for(fake).name
    assert err.request_id
    assert fake.count() == 1


def test_gemini_429_retry_from_body() -> None:
    with FakeProvider(flavor="gemini", api_key=KEY) as f:
        f.fail_next(status=429, retry_after_s=7)
        err = fails(adapter_for(f))
        assert type(err) is RateLimited
        assert err.retry_after_ms == 7000
        assert f.count() == 1


def test_real_bucket_exhaustion_is_rate_limited_with_wait(openai_fake: FakeProvider) -> None:
    openai_fake.consume(200_000)
    err = fails(adapter_for(openai_fake))
    assert type(err) is RateLimited
    assert err.retry_after_ms is not None and err.retry_after_ms > 0
    assert openai_fake.count() == 1


@pytest.mark.parametrize(
    ("status", "kind"), [(500, ServerError), (503, Overloaded), (401, AuthError)]
)
def test_status_families(fake: FakeProvider, status: int, kind: type[ProviderError]) -> None:
    fake.fail_next(status=status)
    err = fails(adapter_for(fake))
    assert type(err) is kind
    assert err.status == status
    assert fake.count() == 1  # max_retries=0: one request per failing call


def test_529_overloaded(anthropic_fake: FakeProvider) -> None:
    anthropic_fake.fail_next(status=529)
    err = fails(adapter_for(anthropic_fake))
    assert type(err) is Overloaded
    assert err.status == 529
    assert anthropic_fake.count() == 1


def test_down_is_a_prompt_timeout(fake: FakeProvider) -> None:
    fake.set_mode("down")
    started = time.monotonic()
    err = fails(adapter_for(fake))
    assert type(err) is ProviderTimeout
    assert time.monotonic() - started < 3.0
    assert fake.count() == 1


def test_hang_times_out_at_the_read_timeout(fake: FakeProvider) -> None:
    fake.set_mode("hang")
    started = time.monotonic()
    err = fails(adapter_for(fake, timeout_s=0.5))
    elapsed = time.monotonic() - started
    assert type(err) is ProviderTimeout
    assert 0.4 < elapsed < 5.0
    assert fake.count() == 1


def test_unreachable_server_is_timeout() -> None:
    with FakeProvider() as f:
        port = f.port
    for adapter in (
        OpenAICompatProvider("x", "m", f"http://127.0.0.1:{port}/v1", None),
        AnthropicProvider("y", "m", f"http://127.0.0.1:{port}", None),
    ):
        assert type(fails(adapter)) is ProviderTimeout


def test_recovers_after_a_failure(fake: FakeProvider) -> None:
    adapter = adapter_for(fake)
    fake.fail_next(status=500)
    fails(adapter)
    PersonaOutput.model_validate_json(adapter.complete(request()).text)
    assert fake.count() == 2


# ------------------------------------------------------------------ streaming


def test_stream_yields_text_then_stream_end(fake: FakeProvider) -> None:
    adapter = adapter_for(fake)
    items = list(adapter.stream(request()))
    *pieces, end = items
    assert len(pieces) > 1 and all(isinstance(p, str) for p in pieces)
    PersonaOutput.model_validate_json("".join(pieces))
    assert isinstance(end, StreamEnd)
    assert end.usage.input_tokens > 0 and end.usage.output_tokens > 0
    assert end.provider == adapter.name and end.model == adapter.model
    assert end.request_id
    if fake.flavor == "gemini":
        assert end.rate_limit is None
    else:
        assert end.rate_limit is not None and end.rate_limit.remaining_requests == 99
    assert fake.calls[-1].streamed
    if fake.flavor != "anthropic":
        assert fake.calls[-1].body["stream_options"] == {"include_usage": True}


def test_stream_plain_text(fake: FakeProvider) -> None:
    *pieces, end = list(adapter_for(fake).stream(text_request()))
    assert IDEA in "".join(pieces)
    assert isinstance(end, StreamEnd)


def test_stream_error_before_first_chunk_is_classified(fake: FakeProvider) -> None:
    fake.fail_next(status=429, retry_after_s=2)  # headers for most, RetryInfo for gemini
    stream = adapter_for(fake).stream(request())
    with pytest.raises(RateLimited) as info:
        next(stream)
    assert info.value.retry_after_ms == 2000
    assert fake.count() == 1


def test_stream_broken_midway_raises_after_partial_text(fake: FakeProvider) -> None:
    fake.fail_stream_after(3)
    got: list[str] = []
    with pytest.raises(ProviderTimeout):
        for item in adapter_for(fake).stream(request()):
            assert isinstance(item, str)
            got.append(item)
    assert len(got) == 3
    assert fake.count() == 1


def test_stream_hang_times_out(fake: FakeProvider) -> None:
    fake.set_mode("hang")
    with pytest.raises(ProviderTimeout):
        list(adapter_for(fake, timeout_s=0.5).stream(request()))
    assert fake.count() == 1


def test_abandoned_stream_closes_cleanly(fake: FakeProvider) -> None:
    adapter = adapter_for(fake)
    stream = adapter.stream(request())
    assert isinstance(next(stream), str)
    stream.close()
    PersonaOutput.model_validate_json(adapter.complete(request()).text)  # connection pool fine


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
def test_the_second_persona_reads_the_shared_prefix_from_the_cache(
        fake: FakeProvider, streamed: bool) -> None:
    context = {"notes": "Labs buy refurbished centrifuges through six-week procurement. " * 80}
    adapter = adapter_for(fake)

    def usage(key: str) -> tuple[int, int, int]:
        req = persona_request(key, IDEA, context)
        if streamed:
            *_, end = adapter.stream(req)
            assert isinstance(end, StreamEnd)
            u = end.usage
        else:
            u = adapter.complete(req).usage
        return u.input_tokens, u.cached_input_tokens, u.cache_write_tokens

    first, second = usage("market"), usage("finance")

    assert first[1] == 0 and second[1] >= 1024
    assert second[1] < second[0]  # cached tokens are a part of all the input tokens
    if fake.flavor == "anthropic":
        assert first[2] == second[1] and second[2] == 0  # written once, then read
    else:
        assert first[2] == second[2] == 0 and second[1] % 128 == 0
