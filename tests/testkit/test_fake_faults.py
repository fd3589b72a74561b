"""The fake provider's seeded random faults and its traffic counters, through the real SDKs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pydantic
import pytest

from masterplan.llm.structured import strict_schema
from masterplan.personas import persona_request
from masterplan.schemas import PersonaOutput
from testkit.fake_provider import FakeProvider
from tests.testkit.test_fake_provider import fake_process

KEY = "sk-test"
REQ = persona_request("market", "an idea", None)
MESSAGES = [{"role": "system", "content": REQ.system},
            {"role": "user", "content": REQ.messages[0].content}]
TOOL = {"name": "PersonaOutput", "description": "Record the analysis.",
        "input_schema": PersonaOutput.model_json_schema()}
# What the project sends an OpenAI-compatible provider: the fake fits only a schema it is sent.
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {
    "name": "PersonaOutput", "schema": strict_schema(PersonaOutput), "strict": True}}


def oai(fake: FakeProvider, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.openai_base_url, api_key=KEY, max_retries=0, **kw)


def claude(fake: FakeProvider, **kw: object) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key=KEY, max_retries=0, **kw)


def json_call(client: openai.OpenAI, *, stream: bool = False) -> str:
    """A persona-shaped structured-output call (response_format json_schema); the text it got."""
    if not stream:
        r = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=REQ.max_tokens,
                                           response_format=SCHEMA_FORMAT)  # type: ignore[arg-type]
        return r.choices[0].message.content or ""
    chunks = client.chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=REQ.max_tokens, stream=True,
        response_format=SCHEMA_FORMAT, stream_options={"include_usage": True})  # type: ignore[arg-type]
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def tool_call(client: anthropic.Anthropic, *, stream: bool = False) -> object:
    """A persona-shaped forced-tool call; the tool input it got."""
    kw = dict(model="c", max_tokens=REQ.max_tokens, system=REQ.system,
              messages=[{"role": "user", "content": REQ.messages[0].content}],
              tools=[TOOL], tool_choice={"type": "tool", "name": "PersonaOutput"})
    if not stream:
        block = client.messages.create(**kw).content[0]  # type: ignore[call-overload]
    else:
        with client.messages.stream(**kw) as s:  # type: ignore[arg-type]
            block = s.get_final_message().content[0]
    assert block.type == "tool_use"
    return block.input


def settled(fake: FakeProvider) -> dict[str, Any]:
    """The stats once no request is open: a client can hold its whole answer a moment before
    the server's thread has counted it as answered."""
    deadline = time.monotonic() + 5
    while (stats := fake.stats())["in_flight"]:
        assert time.monotonic() < deadline, stats
        time.sleep(0.01)
    return stats


def statuses_for(fake: FakeProvider, n: int) -> list[int]:
    client = oai(fake)
    out = []
    for _ in range(n):
        try:
            client.chat.completions.create(model="m", max_tokens=5,
                                           messages=[{"role": "user", "content": "hi"}])
            out.append(200)
        except openai.APIStatusError as exc:
            out.append(exc.status_code)
    return out


def test_error_rate_answers_real_server_errors_in_the_openai_style() -> None:
    with FakeProvider(api_key=KEY, error_rate=1.0, seed=3) as fake:
        client = oai(fake)
        seen: Counter[int] = Counter()
        for _ in range(20):
            with pytest.raises(openai.InternalServerError) as exc:
                json_call(client, stream=len(seen) % 2 == 1)
            seen[exc.value.status_code] += 1
            body = exc.value.response.json()
            assert body["error"]["type"] == "server_error" and body["error"]["message"]
        assert set(seen) == {500, 503}  # both, picked at random
        stats = settled(fake)
        assert stats["faults"]["error"] == 20 and stats["tokens_admitted"] == 0  # errors are free
        assert stats["answered"] == {str(k): v for k, v in sorted(seen.items())}


def test_error_rate_answers_500_or_529_overloaded_in_the_anthropic_style() -> None:
    with FakeProvider(flavor="anthropic", api_key=KEY, error_rate=1.0, seed=5) as fake:
        client = claude(fake)
        seen: Counter[int] = Counter()
        for i in range(20):
            with pytest.raises(anthropic.APIStatusError) as exc:
                tool_call(client, stream=i % 2 == 1)
            seen[exc.value.status_code] += 1
            kind = exc.value.response.json()["error"]["type"]
            expected = {500: "api_error", 529: "overloaded_error"}[exc.value.status_code]
            assert kind == expected
            if exc.value.status_code == 529:
                assert isinstance(exc.value, anthropic.OverloadedError)
        assert set(seen) == {500, 529}


def test_a_seed_fixes_the_sequence_and_the_rates_hold() -> None:
    with FakeProvider(error_rate=0.3, seed=42) as a, FakeProvider(error_rate=0.3, seed=42) as b:
        first, second = statuses_for(a, 200), statuses_for(b, 200)
    assert first == second
    errors = sum(s != 200 for s in first)
    assert 40 <= errors <= 80, errors  # 30 % of 200, within a wide margin
    with FakeProvider(error_rate=0.3, seed=43) as c:
        assert statuses_for(c, 200) != first


def test_truncate_rate_cuts_json_content_in_the_middle_and_still_charges_it() -> None:
    with FakeProvider(api_key=KEY, truncate_rate=1.0, seed=1) as fake:
        client = oai(fake)
        for stream in (False, True):
            text = json_call(client, stream=stream)
            assert text.startswith("{")
            with pytest.raises(ValueError):
                json.loads(text)
        r = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=REQ.max_tokens,
                                           response_format={"type": "json_object"})
        # The finish reason does not give the cut away, and the usage counts what was sent.
        assert r.choices[0].finish_reason == "stop"
        assert r.usage is not None
        assert r.usage.completion_tokens == -(-len(r.choices[0].message.content or "") // 4)
        stats = settled(fake)
        assert stats["faults"]["truncated"] == 3 and stats["answered"] == {"200": 3}
        assert stats["tokens_admitted"] == sum(c.input_tokens + c.output_tokens
                                               for c in fake.calls) > 0
        assert {c.fault for c in fake.calls} == {"truncated"}


def test_truncated_tool_use_is_a_partial_object_that_fails_the_schema() -> None:
    with FakeProvider(flavor="anthropic", api_key=KEY, truncate_rate=1.0, seed=1) as fake:
        client = claude(fake)
        fields = set(PersonaOutput.model_json_schema()["properties"])
        for stream in (False, True):
            got = tool_call(client, stream=stream)
            # the first half of the object: some of its fields, the last one maybe cut short
            assert isinstance(got, dict) and got and set(got) <= fields
            with pytest.raises(pydantic.ValidationError):
                PersonaOutput.model_validate(got)
        assert fake.stats()["tokens_admitted"] > 0


def test_without_faults_nothing_changes_and_rates_can_be_changed_live() -> None:
    with FakeProvider(api_key=KEY, seed=9) as fake:
        PersonaOutput.model_validate_json(json_call(oai(fake)))
        fake.set_faults(error_rate=1.0)
        with pytest.raises(openai.InternalServerError):
            json_call(oai(fake))
        fake.set_faults(error_rate=0.0, truncate_rate=1.0)
        with pytest.raises(ValueError):
            json.loads(json_call(oai(fake)))
        with pytest.raises(ValueError, match="error_rate"):
            fake.set_faults(error_rate=1.5)


def test_stats_count_requests_in_flight_answered_and_undelivered() -> None:
    with FakeProvider(api_key=KEY, latency_s=0.8) as fake:
        client = oai(fake)
        t = threading.Thread(target=json_call, args=(client,))
        t.start()
        deadline = time.monotonic() + 5
        while fake.stats()["in_flight"] == 0:
            assert time.monotonic() < deadline, "the request never arrived"
            time.sleep(0.01)
        open_now = fake.stats()
        assert open_now["received"] == 1 and open_now["answered"] == {}
        assert len(open_now["in_flight_ports"]) == 1
        t.join()
        done = settled(fake)
        assert done["in_flight"] == 0 and done["answered"] == {"200": 1}
        assert done["undelivered"] == 0

        # A client that gives up while its answer is on the way has been charged for nothing.
        with pytest.raises(openai.APITimeoutError):
            json_call(oai(fake, timeout=0.2))
        lost = settled(fake)
        assert lost["received"] == 2 and lost["answered"] == {"200": 1}
        assert lost["undelivered"] == 1
        last = fake.calls[-1]
        assert lost["undelivered_tokens"] == last.input_tokens + last.output_tokens > 0
        assert lost["tokens_admitted"] == sum(c.input_tokens + c.output_tokens for c in fake.calls)
        fake.reset()
        assert fake.stats()["received"] == 0 and fake.stats()["undelivered"] == 0


def test_cli_flags_and_the_faults_control_endpoint() -> None:
    root = Path(__file__).resolve().parents[2]
    with fake_process("--error-rate", "1", "--truncate-rate", "0", "--seed", "11") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-x", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            json_call(client)
        stats = httpx.get(url + "/_fake/stats").json()
        assert stats["faults"] == {"error_rate": 1.0, "truncate_rate": 0.0, "seed": 11,
                                   "error": 1, "truncated": 0}
        r = httpx.post(url + "/_fake/faults", json={"error_rate": 0, "truncate_rate": 1})
        assert r.status_code == 200 and r.json()["faults"]["truncate_rate"] == 1.0
        with pytest.raises(ValueError):
            json.loads(json_call(client))
        assert httpx.post(url + "/_fake/faults", json={"error_rate": 2}).status_code == 400

    bad = subprocess.run([sys.executable, "-m", "testkit.fake_provider",
                          "--error-rate", "1.5"], cwd=root, capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2 and "error_rate must be between 0 and 1" in bad.stderr
