"""The fake provider, driven through the real `openai` and `anthropic` SDKs."""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anthropic
import httpx
import openai
import pydantic
import pytest

from masterplan.llm.structured import strict_schema
from masterplan.personas import persona_request
from masterplan.schemas import PersonaOutput
from testkit.fake_limits import go_duration
from testkit.fake_provider import FakePrompt, FakeProvider

KEY = "sk-test"
REQ = persona_request("market", "an idea", None)
OPENAI_MESSAGES = [
    {"role": "system", "content": REQ.system},
    {"role": "user", "content": REQ.messages[0].content},
]
TOOL = {
    "name": "PersonaOutput",
    "description": "Record the analysis.",
    "input_schema": PersonaOutput.model_json_schema(),
}
# What the project sends an OpenAI-compatible provider for structured output.
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {
    "name": "PersonaOutput", "schema": strict_schema(PersonaOutput), "strict": True}}
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(api_key=KEY) as f:
        yield f


def oai(fake: FakeProvider, key: str = KEY, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.openai_base_url, api_key=key, max_retries=0, **kw)


def claude(fake: FakeProvider, key: str = KEY, **kw: object) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key=key, max_retries=0, **kw)


def small(client: openai.OpenAI, max_tokens: int = 50) -> object:
    return client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello"}], max_tokens=max_tokens
    )


def test_openai_json_schema_fits_and_counts_tokens(fake: FakeProvider) -> None:
    r = oai(fake).chat.completions.create(
        model="llama", messages=OPENAI_MESSAGES, response_format=SCHEMA_FORMAT,  # type: ignore[arg-type]
        max_tokens=REQ.max_tokens,
    )
    text = r.choices[0].message.content or ""
    PersonaOutput.model_validate_json(text)
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "llama"
    assert r.usage is not None
    assert r.usage.prompt_tokens == -(-REQ.prompt_chars // 4)
    assert r.usage.completion_tokens == -(-len(text) // 4)
    (call,) = fake.calls
    assert (call.api, call.status, call.streamed) == ("openai", 200, False)
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert call.body["response_format"] == SCHEMA_FORMAT
    assert fake.tokens_admitted == r.usage.total_tokens


def test_only_what_the_request_demands_shapes_the_answer(fake: FakeProvider) -> None:
    # The prompt names the schema and asks for JSON in every call (REQ.system does).
    assert "PersonaOutput" in OPENAI_MESSAGES[0]["content"]
    client = oai(fake)
    mode = client.chat.completions.create(model="m", messages=OPENAI_MESSAGES,
                                          response_format={"type": "json_object"})
    data = json.loads(mode.choices[0].message.content or "")
    assert isinstance(data, dict) and data  # valid JSON, an object ...
    with pytest.raises(pydantic.ValidationError):
        PersonaOutput.model_validate(data)  # ... that follows no schema
    plain = client.chat.completions.create(model="m", messages=OPENAI_MESSAGES)
    with pytest.raises(ValueError):
        json.loads(plain.choices[0].message.content or "")  # prose
    # A tool that is offered but not forced is no demand either.
    m = claude(fake).messages.create(
        model="c", max_tokens=REQ.max_tokens, system=REQ.system,
        messages=[{"role": "user", "content": REQ.messages[0].content}], tools=[TOOL])
    assert [b.type for b in m.content] == ["text"]


def test_a_schema_of_its_own_is_answered_from_that_schema(fake: FakeProvider) -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["pitch", "score",
              "tags"], "properties": {"pitch": {"type": "string"}, "score": {"type": "integer"},
                                      "tags": {"type": "array", "items": {"type": "string"}}}}
    r = oai(fake).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Startup idea:\nbike repair"}],
        response_format={"type": "json_schema",  # type: ignore[arg-type]
                         "json_schema": {"name": "Pitch", "schema": schema, "strict": True}})
    data = json.loads(r.choices[0].message.content or "")
    assert set(data) == {"pitch", "score", "tags"} and "bike repair" in data["pitch"]
    assert isinstance(data["score"], int) and data["tags"]


def test_json_schema_unsupported_is_a_400_in_each_providers_words() -> None:
    words = {"openai": "'response_format' of type 'json_schema' is not supported",
             "groq": "does not support response format `json_schema`",
             "gemini": "response_format json_schema is not supported by this model"}
    for flavor, said in words.items():
        with FakeProvider(flavor=flavor, json_schema_unsupported=True) as f:  # type: ignore[arg-type]
            client = oai(f)
            with pytest.raises(openai.BadRequestError) as exc:
                client.chat.completions.create(model="m", messages=OPENAI_MESSAGES,
                                               response_format=SCHEMA_FORMAT)  # type: ignore[arg-type]
            assert said in str(exc.value.response.json()), flavor
            # JSON mode and plain calls are still answered
            client.chat.completions.create(model="m", messages=OPENAI_MESSAGES,
                                           response_format={"type": "json_object"})
            assert [c.status for c in f.calls] == [400, 200]
            assert f.tokens_admitted == f.calls[1].input_tokens + f.calls[1].output_tokens


def test_ignore_instructions_answers_a_schema_with_json_that_does_not_fit_it() -> None:
    with FakeProvider(ignore_instructions=True) as f:
        r = oai(f).chat.completions.create(model="m", messages=OPENAI_MESSAGES,
                                           response_format=SCHEMA_FORMAT)  # type: ignore[arg-type]
        data = json.loads(r.choices[0].message.content or "")
        with pytest.raises(pydantic.ValidationError):
            PersonaOutput.model_validate(data)
        m = claude(f).messages.create(
            model="c", max_tokens=REQ.max_tokens, system=REQ.system,
            messages=[{"role": "user", "content": REQ.messages[0].content}],
            tools=[TOOL], tool_choice={"type": "tool", "name": "PersonaOutput"})
        (block,) = m.content
        assert block.type == "tool_use" and isinstance(block.input, dict) and block.input
        with pytest.raises(pydantic.ValidationError):
            PersonaOutput.model_validate(block.input)
        assert "hello" in (small(oai(f)).choices[0].message.content or "")  # type: ignore[attr-defined]
        assert f.stats()["ignore_instructions"] is True


def test_gemini_prefix_path(fake: FakeProvider) -> None:
    client = openai.OpenAI(base_url=fake.url + "/v1beta/openai", api_key=KEY, max_retries=0)
    r = client.chat.completions.create(
        model="gemini-2.0-flash", messages=OPENAI_MESSAGES, response_format=SCHEMA_FORMAT,  # type: ignore[arg-type]
    )
    PersonaOutput.model_validate_json(r.choices[0].message.content or "")
    assert fake.calls[0].path == "/v1beta/openai/chat/completions"


def test_plain_text_without_json(fake: FakeProvider) -> None:
    r = small(oai(fake))
    assert "hello" in (r.choices[0].message.content or "")  # type: ignore[attr-defined]


def test_anthropic_forced_tool_use(fake: FakeProvider) -> None:
    m = claude(fake).messages.create(
        model="claude-x", max_tokens=REQ.max_tokens,
        system=[{"type": "text", "text": REQ.system}],
        messages=[{"role": "user", "content": REQ.messages[0].content}],
        tools=[TOOL], tool_choice={"type": "tool", "name": "PersonaOutput"},
    )
    (block,) = m.content
    assert block.type == "tool_use" and block.name == "PersonaOutput"
    PersonaOutput.model_validate(block.input)
    assert m.stop_reason == "tool_use"
    assert m.usage.input_tokens == -(-REQ.prompt_chars // 4)
    assert m.usage.output_tokens > 0
    assert m._request_id and m._request_id.startswith("req_")
    assert fake.calls[0].api == "anthropic"


def test_streams_end_with_usage(fake: FakeProvider) -> None:
    chunks = list(
        oai(fake).chat.completions.create(
            model="m", messages=OPENAI_MESSAGES, response_format=SCHEMA_FORMAT,  # type: ignore[arg-type]
            stream=True, stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    PersonaOutput.model_validate_json(text)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == -(-len(text) // 4)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"

    client = claude(fake)
    with client.messages.stream(
        model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "hello" in text and final.usage.output_tokens == -(-len(text) // 4)
    assert final.stop_reason == "end_turn"

    with client.messages.stream(
        model="claude-x", max_tokens=REQ.max_tokens, system=REQ.system,
        messages=[{"role": "user", "content": REQ.messages[0].content}],
        tools=[TOOL], tool_choice={"type": "tool", "name": "PersonaOutput"},
    ) as stream:
        kinds = {e.type for e in stream}
        final = stream.get_final_message()
    assert "input_json" in kinds  # input_json_delta events arrived
    PersonaOutput.model_validate(final.content[0].input)
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    assert [c.streamed for c in fake.calls] == [True, True, True]


def test_tpm_429_with_openai_headers() -> None:
    with FakeProvider(tpm=1000, rpm=100, flavor="openai") as fake:
        client = oai(fake)
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hello"}], max_tokens=300
        )
        r = raw.parse()
        assert r.usage is not None
        used = r.usage.total_tokens  # the unused part of max_tokens was refunded
        h = raw.headers
        assert h["x-ratelimit-limit-tokens"] == "1000"
        assert 1000 - used - 1 <= int(h["x-ratelimit-remaining-tokens"]) <= 1000 - used + 2
        assert GO_DURATION.match(h["x-ratelimit-reset-tokens"])
        assert h["x-ratelimit-limit-requests"] == "100"
        assert h["x-ratelimit-remaining-requests"] == "99"
        assert GO_DURATION.match(h["x-ratelimit-reset-requests"])
        assert fake.tokens_admitted == used

        with pytest.raises(openai.RateLimitError) as exc:
            small(client, max_tokens=995)
        h = exc.value.response.headers
        wait = int(h["retry-after-ms"]) / 1000
        assert 0 < wait <= 60 and int(h["retry-after"]) == -(-int(h["retry-after-ms"]) // 1000)
        assert int(h["x-ratelimit-remaining-tokens"]) < 996
        err = exc.value.response.json()["error"]
        assert (err["type"], err["code"]) == ("tokens", "rate_limit_exceeded")
        assert "Limit 1000" in err["message"]
        assert fake.count(429) == 1 and fake.count(200) == 1 and fake.count() == 2


def test_groq_429_body() -> None:
    with FakeProvider(tpm=6000, flavor="groq") as fake:
        fake.consume(5000)
        with pytest.raises(openai.RateLimitError) as exc:
            small(oai(fake), max_tokens=1898)  # + 2 input tokens
        err = exc.value.response.json()["error"]
        assert err["type"] == "tokens" and err["code"] == "rate_limit_exceeded"
        assert "Rate limit reached for model `m`" in err["message"]
        used = re.search(r"on tokens per minute \(TPM\): Limit 6000, Used (\d+), Requested 1900\.",
                         err["message"])
        assert used and 4900 <= int(used.group(1)) <= 5000  # refilled a little since consume()
        assert re.search(r"Please try again in \d+(\.\d+)?s\.", err["message"])
        assert exc.value.response.headers["retry-after"] == "9"


def test_gemini_429_has_retry_info_and_no_header() -> None:
    with FakeProvider(rpm=1, flavor="gemini") as fake:
        client = openai.OpenAI(base_url=fake.url + "/v1beta/openai", api_key="k", max_retries=0)
        small(client)
        with pytest.raises(openai.RateLimitError) as exc:
            small(client)
        response = exc.value.response
        assert "retry-after" not in response.headers and "retry-after-ms" not in response.headers
        (item,) = response.json()
        err = item["error"]
        assert (err["code"], err["status"]) == (429, "RESOURCE_EXHAUSTED")
        (info,) = [d for d in err["details"] if d["@type"].endswith("google.rpc.RetryInfo")]
        assert re.fullmatch(r"\d+s", info["retryDelay"]) and 55 <= int(info["retryDelay"][:-1]) <= 60


def test_anthropic_429_headers_and_body() -> None:
    with FakeProvider(tpm=2000, rpm=50, flavor="anthropic") as fake:
        client = claude(fake)
        raw = client.messages.with_raw_response.create(
            model="c", max_tokens=100, messages=[{"role": "user", "content": "hello"}]
        )
        h = raw.headers
        assert h["anthropic-ratelimit-tokens-limit"] == "2000"
        assert int(h["anthropic-ratelimit-tokens-remaining"]) > 1900
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", h["anthropic-ratelimit-tokens-reset"])
        assert h["anthropic-ratelimit-requests-remaining"] == "49"
        assert h["request-id"].startswith("req_")
        fake.consume(2000)
        with pytest.raises(anthropic.RateLimitError) as exc:
            client.messages.create(
                model="c", max_tokens=100, messages=[{"role": "user", "content": "hello"}]
            )
        h = exc.value.response.headers
        assert int(h["retry-after"]) >= 1 and "anthropic-ratelimit-tokens-remaining" in h
        body = exc.value.response.json()
        assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"


def test_consume_and_continuous_refill() -> None:
    with FakeProvider(tpm=60_000) as fake:  # 1000 tokens a second
        client = oai(fake)
        fake.consume(60_000)
        with pytest.raises(openai.RateLimitError) as exc:
            small(client, max_tokens=99)
        wait_s = int(exc.value.response.headers["retry-after-ms"]) / 1000
        assert 0 < wait_s <= 0.101
        time.sleep(wait_s + 0.02)
        small(client, max_tokens=99)
        assert fake.count(200) == 1


def test_request_larger_than_the_bucket() -> None:
    with FakeProvider(tpm=500, flavor="groq") as fake:
        with pytest.raises(openai.APIStatusError) as exc:
            small(oai(fake), max_tokens=600)
        assert exc.value.status_code == 413
        assert "Request too large" in exc.value.response.json()["error"]["message"]


def test_wrong_key_is_401(fake: FakeProvider) -> None:
    with pytest.raises(openai.AuthenticationError):
        small(oai(fake, key="sk-wrong"))
    with pytest.raises(anthropic.AuthenticationError) as exc:
        claude(fake, key="sk-wrong").messages.create(
            model="c", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert exc.value.response.json()["error"]["type"] == "authentication_error"
    # x-api-key (older Anthropic SDKs, raw HTTP) is checked exactly too
    ok = httpx.post(
        fake.url + "/v1/messages", headers={"x-api-key": KEY},
        json={"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]},
    )
    assert ok.status_code == 200 and ok.headers["request-id"]
    assert fake.count(401) == 2


def test_fail_next(fake: FakeProvider) -> None:
    client = oai(fake)
    fake.fail_next(status=500)
    with pytest.raises(openai.InternalServerError):
        small(client)
    fake.fail_next(status=400)
    with pytest.raises(openai.BadRequestError) as bad:
        small(client)
    assert bad.value.code == "context_length_exceeded"
    quota = {"error": {"code": "insufficient_quota", "type": "insufficient_quota",
                       "message": "You exceeded your current quota"}}
    fake.fail_next(2, status=429, body=quota)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as exc:
            small(client)
        assert exc.value.code == "insufficient_quota"
    fake.fail_next(status=503, retry_after_s=2.5)
    with pytest.raises(openai.InternalServerError) as exc:
        small(client)
    assert exc.value.response.headers["retry-after"] == "3"
    small(client)  # the queue is empty again
    assert [c.status for c in fake.calls] == [500, 400, 429, 429, 503, 200]

    with FakeProvider(flavor="anthropic") as af:
        af.fail_next(status=529)
        with pytest.raises(anthropic.OverloadedError) as over:
            claude(af).messages.create(
                model="c", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
        assert over.value.response.json()["error"]["type"] == "overloaded_error"
        af.fail_next(status=500)
        with pytest.raises(anthropic.InternalServerError):
            claude(af).messages.create(
                model="c", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )


def test_down_mode_is_a_prompt_connection_error(fake: FakeProvider) -> None:
    client, aclient = oai(fake), claude(fake)
    small(client)  # a pooled keep-alive connection exists
    fake.set_mode("down")
    started = time.monotonic()
    with pytest.raises(openai.APIConnectionError):
        small(client)
    with pytest.raises(anthropic.APIConnectionError):
        aclient.messages.create(model="c", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert time.monotonic() - started < 1.0
    fake.set_mode("ok")
    small(client)
    assert [c.status for c in fake.calls] == [200, 0, 0, 200]


def test_hang_mode_times_out(fake: FakeProvider) -> None:
    fake.set_mode("hang")
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        small(oai(fake, timeout=0.3))
    assert time.monotonic() - started < 2.0
    fake.reset()  # ends the hang
    small(oai(fake))


def test_invalid_json_mode(fake: FakeProvider) -> None:
    fake.set_mode("invalid_json")
    r = oai(fake).chat.completions.create(
        model="m", messages=OPENAI_MESSAGES, response_format={"type": "json_object"}
    )
    with pytest.raises(ValueError):
        json.loads(r.choices[0].message.content or "")
    m = claude(fake).messages.create(
        model="c", max_tokens=REQ.max_tokens, system=REQ.system,
        messages=[{"role": "user", "content": REQ.messages[0].content}],
        tools=[TOOL], tool_choice={"type": "tool", "name": "PersonaOutput"},
    )
    assert m.content[0].type == "tool_use" and m.content[0].input == {}


def test_fail_stream_after_breaks_midway(fake: FakeProvider) -> None:
    fake.fail_stream_after(2)
    stream = oai(fake).chat.completions.create(
        model="m", messages=OPENAI_MESSAGES, response_format={"type": "json_object"}, stream=True
    )
    got: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert len([g for g in got if g]) == 2

    fake.fail_stream_after(1)
    # The Anthropic SDK lets the transport's error (httpx2.RemoteProtocolError) through unwrapped
    # mid-stream, where the OpenAI SDK wraps it in APIConnectionError.
    with (
        pytest.raises(Exception, match="incomplete chunked read") as exc,
        claude(fake).messages.stream(
            model="c", max_tokens=100, messages=[{"role": "user", "content": "hello there"}]
        ) as s,
    ):
        "".join(s.text_stream)
    assert type(exc.value).__name__ in ("RemoteProtocolError", "APIConnectionError")
    # only the next stream breaks
    with claude(fake).messages.stream(
        model="c", max_tokens=100, messages=[{"role": "user", "content": "hello there"}]
    ) as s:
        assert "hello there" in "".join(s.text_stream)


def test_custom_responder_and_truncation() -> None:
    seen: list[FakePrompt] = []

    def responder(prompt: FakePrompt) -> str:
        seen.append(prompt)
        return "x" * 400  # 100 tokens

    with FakeProvider(responder=responder) as fake:
        r = small(oai(fake), max_tokens=10)
        choice = r.choices[0]  # type: ignore[attr-defined]
        assert choice.finish_reason == "length" and choice.message.content == "x" * 40
        assert seen[0].user_text == "hello" and seen[0].max_tokens == 10


def test_go_duration() -> None:
    assert go_duration(6.5) == "6.5s"
    assert go_duration(62) == "1m2s"
    assert go_duration(0.12) == "120ms"
    assert go_duration(60) == "1m0s"
    assert go_duration(3600) == "1h0m0s"
    assert go_duration(0) == "0s"
    assert go_duration(7.66) == "7.66s"


@contextmanager
def fake_process(*args: str) -> Iterator[str]:
    """The fake provider as its own process (`python -m ...`): its URL; stopped with SIGTERM,
    which it must answer by exiting cleanly."""
    proc = subprocess.Popen([sys.executable, "-m", "testkit.fake_provider", "--port",
                             "0", *args], cwd=Path(__file__).resolve().parents[2],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "the fake provider did not start"
        line = proc.stdout.readline().strip()
        assert re.fullmatch(r"READY http://127\.0\.0\.1:\d+", line)
        yield line.split()[1]
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


def test_subprocess_structured_output_flags() -> None:
    with fake_process("--json-schema-unsupported") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="m", messages=OPENAI_MESSAGES,
                                           response_format=SCHEMA_FORMAT)  # type: ignore[arg-type]
        assert httpx.get(url + "/_fake/stats").json()["json_schema_unsupported"] is True
    with fake_process("--ignore-instructions") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        r = client.chat.completions.create(model="m", messages=OPENAI_MESSAGES,
                                           response_format=SCHEMA_FORMAT)  # type: ignore[arg-type]
        with pytest.raises(pydantic.ValidationError):
            PersonaOutput.model_validate_json(r.choices[0].message.content or "")


def test_subprocess_mode() -> None:
    with fake_process("--tpm", "6000", "--rpm", "30", "--flavor", "groq", "--api-key", "sk-x") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-x", max_retries=0)
        r = small(client)
        stats = httpx.get(url + "/_fake/stats").json()
        assert stats["calls"] == 1 and stats["by_status"] == {"200": 1}
        assert stats["tokens_admitted"] == r.usage.total_tokens  # type: ignore[attr-defined]
        assert httpx.post(url + "/_fake/fail_next", json={"status": 503}).status_code == 200
        with pytest.raises(openai.InternalServerError):
            small(client)
        httpx.post(url + "/_fake/consume", json={"tokens": 6000})
        with pytest.raises(openai.RateLimitError):
            small(client)
        httpx.post(url + "/_fake/mode", json={"mode": "down"})
        with pytest.raises(openai.APIConnectionError):
            small(client)
        httpx.post(url + "/_fake/reset")
        small(client)
        assert httpx.get(url + "/_fake/stats").json()["by_status"] == {"200": 1}
