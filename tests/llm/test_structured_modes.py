"""Structured output uses each provider's strongest guarantee: the mode each kind sends, the
strict schema every stage's output is sent as, overrides, and a refused mode degraded once and
remembered for every worker. Real SDKs against the honest fake provider, state on real Redis."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pydantic import BaseModel, Field

from masterplan import errors as E
from masterplan.errors import ConfigError
from masterplan.llm.base import StreamEnd
from masterplan.llm.registry import build_router
from masterplan.llm.router import Router
from masterplan.llm.structured import (
    MODE_TTL_S,
    ModeMemory,
    ModeUnsupported,
    refused_mode,
    strict_schema,
)
from masterplan.llm.stub import fake_output
from masterplan.personas import persona_request
from masterplan.schemas import PersonaOutput
from masterplan.stages import JobInput, pipeline
from testkit.fake_provider import FakePrompt, FakeProvider, default_responder
from tests.conftest import RUN_PREFIX, make_settings

REQ = persona_request("market", "a marketplace for used lab equipment", None)
LIMITS = {"TPM": "10000000", "RPM": "100000"}


@pytest.fixture(autouse=True)
def _forget_modes(redis_client: Any) -> Iterator[None]:
    """The degraded modes of this run: other tests' routers must start from the configured."""
    def forget() -> None:
        keys = list(redis_client.scan_iter(f"{RUN_PREFIX}:so:*", count=1000))
        if keys:
            redis_client.delete(*keys)
    forget()
    yield
    forget()


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeProvider]]:
    with FakeProvider(flavor="anthropic", api_key="sk-ant") as a, \
            FakeProvider(flavor="gemini", api_key="sk-goo") as g, \
            FakeProvider(flavor="groq", api_key="sk-grq") as q, \
            FakeProvider(flavor="openai", api_key="sk-oai") as o:
        yield {"anthropic": a, "google": g, "groq": q, "openai": o}


def env_for(fakes: dict[str, FakeProvider], **extra: str) -> dict[str, str]:
    env = {
        "ANTHROPIC_BASE_URL": fakes["anthropic"].anthropic_base_url, "ANTHROPIC_API_KEY": "sk-ant",
        "GOOGLE_BASE_URL": fakes["google"].url + "/v1beta/openai/", "GOOGLE_API_KEY": "sk-goo",
        "GROQ_BASE_URL": fakes["groq"].openai_base_url, "GROQ_API_KEY": "sk-grq",
        "OPENAI_BASE_URL": fakes["openai"].openai_base_url, "OPENAI_API_KEY": "sk-oai",
    }
    for name in ("ANTHROPIC", "GOOGLE", "GROQ", "OPENAI"):
        env.update({f"{name}_{k}": v for k, v in LIMITS.items()})
    return env | extra


def router_for(fakes: dict[str, FakeProvider], redis_client: Any, **extra: str) -> Router:
    return build_router(make_settings(env_for(fakes, **extra)), redis_client)


def follows_the_prompt(prompt: FakePrompt) -> str | dict[str, Any]:
    """A model that follows the schema its prompt names even when the request carries none."""
    if not prompt.wants_schema and "Schema name: PersonaOutput" in prompt.system:
        return fake_output("PersonaOutput", prompt.system, prompt.user_text)
    return default_responder(prompt)


# ------------------------------------------------------------------ the strict schema

# What strict structured outputs accept in a schema node ($defs at the root only).
ALLOWED = {"type", "properties", "required", "additionalProperties", "items", "enum", "const",
           "anyOf", "$ref", "description", "title"}


def strict_violations(schema: dict[str, Any]) -> list[str]:
    """Every place where `schema` breaks a rule of strict structured outputs."""
    defs = schema.get("$defs", {})
    problems: list[str] = []

    def walk(node: dict[str, Any], at: str) -> None:
        for key in set(node) - ALLOWED:
            problems.append(f"{at}: keyword {key!r} is not allowed")
        if "$ref" in node:
            if len(node) > 1:
                problems.append(f"{at}: $ref with siblings {sorted(set(node) - {'$ref'})}")
            if node["$ref"].removeprefix("#/$defs/") not in defs:
                problems.append(f"{at}: $ref {node['$ref']} is not in $defs")
        if node.get("type") == "object" or "properties" in node:
            if node.get("additionalProperties") is not False:
                problems.append(f"{at}: additionalProperties is not false")
            if sorted(node.get("required", [])) != sorted(node.get("properties", {})):
                problems.append(f"{at}: not every property is required")
            for name, sub in node.get("properties", {}).items():
                walk(sub, f"{at}.{name}")
        if "items" in node:
            walk(node["items"], f"{at}[]")
        for i, sub in enumerate(node.get("anyOf", [])):
            walk(sub, f"{at}|{i}")

    if schema.get("type") != "object":
        problems.append("$: the root is not an object")
    walk({k: v for k, v in schema.items() if k != "$defs"}, "$")
    for name, sub in defs.items():
        walk(sub, f"$defs.{name}")
    return problems


def stage_schemas() -> list[tuple[str, type[BaseModel]]]:
    """Every stage's output schema, from the requests the pipeline's stages build, and the
    interview turn's."""
    settings = make_settings({"LLM_PROVIDERS": "stub"})
    out = []
    for stage in pipeline().stages:
        found: dict[str, dict[str, Any]] = {name: {} for name in stage.needs}
        req = stage.build(JobInput("a marketplace for used lab equipment", None), found, settings)
        assert req.schema is not None, stage.name
        out.append((stage.name, req.schema))
    from masterplan.interview import structure_request

    turn = structure_request("lab equipment", [], [], max_tokens=500)
    assert turn.schema is not None
    return [*out, ("interview", turn.schema)]


@pytest.mark.parametrize(("stage", "schema"), stage_schemas(), ids=lambda v: str(getattr(v, "__name__", v)))
def test_every_stage_schema_is_accepted_by_strict_modes(stage: str, schema: type[BaseModel]) -> None:
    strict = strict_schema(schema)
    assert strict_violations(strict) == [], stage
    # nothing of the model is lost: the same fields, the same nested models
    assert set(strict["properties"]) == set(schema.model_fields)
    assert set(strict.get("$defs", {})) == set(schema.model_json_schema().get("$defs", {}))
    # and the raw pydantic schema would not have been (so the check checks something)
    assert strict_violations(schema.model_json_schema())


def test_the_checker_covers_all_the_pipelines_stages() -> None:
    assert [name for name, _ in stage_schemas()] == [*pipeline().names, "interview"]


def test_dropped_constraints_stay_as_hints_and_pydantic_still_enforces_them() -> None:
    strict = strict_schema(PersonaOutput)
    confidence = strict["$defs"]["Assumption"]["properties"]["confidence"]
    assert confidence["description"] == "0 = a guess, 1 = certain (maximum: 1, minimum: 0)"
    assert "minItems" not in strict["properties"]["key_findings"]
    assert "minItems: 1" in strict["properties"]["key_findings"]["description"]


class Inner(BaseModel):
    x: int


class Awkward(BaseModel):
    """Optional fields, defaults, a described nested model."""

    name: str = Field(default="n", max_length=5, pattern="^[a-z]+$")
    note: str | None = None
    inner: Inner = Field(description="a nested model with a description")
    when: str = Field(json_schema_extra={"format": "date-time"})


def test_strict_schema_of_optional_defaulted_and_described_fields() -> None:
    strict = strict_schema(Awkward)
    assert strict_violations(strict) == []
    assert strict["required"] == ["name", "note", "inner", "when"]
    assert strict["properties"]["note"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    inner = strict["properties"]["inner"]  # the $ref with a description, inlined
    assert inner["properties"] == {"x": {"title": "X", "type": "integer"}}
    assert inner["description"] == "a nested model with a description"


def test_what_strict_mode_cannot_say_is_refused_at_once() -> None:
    class Free(BaseModel):
        extra: dict[str, Any]

    with pytest.raises(ValueError, match="without properties"):
        strict_schema(Free)


# ------------------------------------------------------------------ a refused mode, in words

@pytest.mark.parametrize("said", [
    "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
    "This model does not support response format `json_schema`. See supported models at ...",
    "Invalid JSON payload received. Unknown name \"additionalProperties\" at "
    "'generation_config.response_schema': Cannot find field.",
])
def test_a_400_about_the_response_format_is_mode_unsupported(said: str) -> None:
    err = refused_mode(E.BadRequest(f"groq: HTTP 400: {said}", provider="groq", status=400),
                       "json_schema")
    assert isinstance(err, ModeUnsupported) and err.mode == "json_schema"
    assert err.outcome == "mode_unsupported" and err.provider == "groq" and err.status == 400


def test_other_400s_and_modes_that_sent_nothing_stay_what_they_were() -> None:
    too_long = E.BadRequest("x: HTTP 400: maximum context length is 128000 tokens", status=400)
    assert refused_mode(too_long, "json_schema") is too_long
    about_format = E.BadRequest("x: HTTP 400: response_format is wrong", status=400)
    assert refused_mode(about_format, "prompt") is about_format  # none was sent
    assert refused_mode(about_format, "tool") is about_format
    assert refused_mode(about_format, None) is about_format
    invalid = E.InvalidOutput("x: HTTP 400: json_validate_failed", status=400)
    assert refused_mode(invalid, "json_schema") is invalid  # Groq judged the output, not the mode


# ------------------------------------------------------------------ settings

def test_known_defaults_and_the_override() -> None:
    env = {"LLM_PROVIDERS": "anthropic,google,groq,openai,local", "ANTHROPIC_API_KEY": "a",
           "GOOGLE_API_KEY": "g", "GROQ_API_KEY": "q", "OPENAI_API_KEY": "o",
           "LOCAL_BASE_URL": "http://127.0.0.1:1/v1", "LOCAL_MODEL": "llama3"}
    settings = make_settings(env)
    modes = {p.name: (p.structured_output, p.schema_strict) for p in settings.providers}
    assert modes == {"anthropic": ("tool", False), "google": ("json_schema", True),
                     "groq": ("json_schema", False), "openai": ("json_schema", True),
                     "local": ("json_object", False)}
    over = make_settings(env | {"GROQ_STRUCTURED_OUTPUT": " json_object ",
                                "ANTHROPIC_STRUCTURED_OUTPUT": "prompt",
                                "LOCAL_STRUCTURED_OUTPUT": "json_schema"})
    assert over.provider("groq").structured_output == "json_object"
    assert over.provider("anthropic").structured_output == "prompt"
    assert over.provider("local").structured_output == "json_schema"


@pytest.mark.parametrize(("var", "value"), [
    ("ANTHROPIC_STRUCTURED_OUTPUT", "json_schema"),
    ("ANTHROPIC_STRUCTURED_OUTPUT", "json_object"),
    ("GROQ_STRUCTURED_OUTPUT", "tool"),
    ("GROQ_STRUCTURED_OUTPUT", "yaml"),
])
def test_a_mode_the_kind_cannot_send_is_a_config_error_naming_the_variable(var: str,
                                                                          value: str) -> None:
    env = {"LLM_PROVIDERS": "anthropic,groq", "ANTHROPIC_API_KEY": "a", "GROQ_API_KEY": "q"}
    with pytest.raises(ConfigError, match=var):
        make_settings(env | {var: value})


# ------------------------------------------------------------------ what each provider is sent

def test_each_provider_kind_sends_its_strongest_mode(fakes, redis_client) -> None:
    for name in ("anthropic", "google", "groq", "openai"):
        routed = router_for(fakes, redis_client, LLM_PROVIDERS=name).route(REQ)
        assert routed.completion.provider == name
        assert isinstance(routed.completion.data, PersonaOutput)
        assert [a.outcome for a in routed.attempts] == ["ok"]
    anthropic = fakes["anthropic"].calls[0].body
    assert anthropic["tool_choice"] == {"type": "tool", "name": "PersonaOutput"}
    assert [t["name"] for t in anthropic["tools"]] == ["PersonaOutput"]
    for name, strict in (("google", True), ("groq", False), ("openai", True)):
        fmt = fakes[name].calls[0].body["response_format"]
        assert fmt == {"type": "json_schema", "json_schema": {
            "name": "PersonaOutput", "schema": strict_schema(PersonaOutput), "strict": strict}}, name
    assert fakes["google"].calls[0].path == "/v1beta/openai/chat/completions"


def test_a_custom_provider_gets_json_mode_and_an_honest_model_is_not_fooled_by_the_prompt(
        fakes, redis_client) -> None:
    fake = fakes["openai"]
    env = {"LLM_PROVIDERS": "local", "LOCAL_BASE_URL": fake.openai_base_url,
           "LOCAL_API_KEY": "sk-oai", "LOCAL_MODEL": "llama3"}
    router = build_router(make_settings(env), redis_client)
    with pytest.raises(E.AllProvidersFailed) as exc:
        router.route(REQ)
    assert [c.body["response_format"] for c in fake.calls] == [{"type": "json_object"}] * 2
    assert [a.outcome for a in exc.value.attempts] == ["invalid_output", "invalid_output"]


def test_the_override_is_what_is_sent(fakes, redis_client) -> None:
    fakes["google"].responder = follows_the_prompt
    router = router_for(fakes, redis_client, LLM_PROVIDERS="google,anthropic",
                        GOOGLE_STRUCTURED_OUTPUT="json_object")
    assert router.route(REQ).completion.provider == "google"
    assert fakes["google"].calls[0].body["response_format"] == {"type": "json_object"}

    router = router_for(fakes, redis_client, LLM_PROVIDERS="anthropic",
                        ANTHROPIC_STRUCTURED_OUTPUT="prompt")
    with pytest.raises(E.AllProvidersFailed) as exc:  # no tool: the honest model writes prose
        router.route(REQ)
    assert [a.outcome for a in exc.value.attempts] == ["invalid_output", "invalid_output"]
    assert [("tools" in c.body, c.status) for c in fakes["anthropic"].calls] == [(False, 200)] * 2


# ------------------------------------------------------------------ degraded once, remembered

def test_json_schema_unsupported_degrades_once_and_every_router_remembers(
        fakes, redis_client, caplog) -> None:
    groq = fakes["groq"]
    groq.json_schema_unsupported = True
    groq.responder = follows_the_prompt  # in JSON mode it reads the schema from its prompt
    first = router_for(fakes, redis_client, LLM_PROVIDERS="groq,google")

    with caplog.at_level(logging.WARNING):
        routed = first.route(REQ)

    assert routed.completion.provider == "groq"  # no fallback because of it
    assert isinstance(routed.completion.data, PersonaOutput)
    assert [(a.provider, a.outcome) for a in routed.attempts] == [
        ("groq", "mode_unsupported"), ("groq", "ok")]
    assert "json_schema" in (routed.attempts[0].error or "")
    assert routed.attempts[0].error_class == "ModeUnsupported" and routed.attempts[0].cost_usd == 0
    assert [(c.status, c.body["response_format"]["type"]) for c in groq.calls] == [
        (400, "json_schema"), (200, "json_object")]
    assert fakes["google"].count() == 0
    # not the provider's failure: no circuit count, no cooldown
    state = first.cooldowns.snapshot(["groq"])["groq"]
    assert state.failures == 0 and state.available
    assert "refused structured output json_schema: asking in json_object" in caplog.text
    key = f"{RUN_PREFIX}:so:groq:llama-3.1-8b-instant"
    assert redis_client.get(key) == b"json_object"
    assert MODE_TTL_S * 1000 - 60_000 < redis_client.pttl(key) <= MODE_TTL_S * 1000

    # another worker: its own router and process memory, the same Redis
    second = router_for(fakes, redis_client, LLM_PROVIDERS="groq,google")
    again = second.route(REQ)
    assert [(a.provider, a.outcome) for a in again.attempts] == [("groq", "ok")]
    assert groq.calls[-1].body["response_format"] == {"type": "json_object"}
    assert groq.count(400) == 1
    # another model of the same provider starts from the configured mode
    other = router_for(fakes, redis_client, LLM_PROVIDERS="groq", GROQ_MODEL="openai/gpt-oss-20b")
    groq.json_schema_unsupported = False
    other.route(REQ)
    assert groq.calls[-1].body["response_format"]["type"] == "json_schema"


def test_a_stream_is_degraded_before_its_first_chunk(fakes, redis_client) -> None:
    groq = fakes["groq"]
    groq.json_schema_unsupported = True
    groq.responder = follows_the_prompt
    attempts: list[Any] = []
    items = list(router_for(fakes, redis_client, LLM_PROVIDERS="groq").stream(REQ, attempts))
    assert isinstance(items[-1], StreamEnd) and items[-1].provider == "groq"
    PersonaOutput.model_validate_json("".join(i for i in items if isinstance(i, str)))
    assert [a.outcome for a in attempts] == ["mode_unsupported", "ok"]
    assert [c.streamed for c in groq.calls] == [True, True]


def test_each_refusal_degrades_one_step_down_to_the_prompt_alone(fakes, redis_client) -> None:
    groq = fakes["groq"]
    groq.responder = follows_the_prompt
    for said in ("This model does not support response format `json_schema`.",
                 "'response_format' of type 'json_object' is not supported with this model."):
        groq.fail_next(status=400, body={"error": {"message": said, "type": "invalid_request_error",
                                                   "code": None}})
    router = router_for(fakes, redis_client, LLM_PROVIDERS="groq")
    routed = router.route(REQ)
    assert [a.outcome for a in routed.attempts] == ["mode_unsupported", "mode_unsupported", "ok"]
    sent = [c.body.get("response_format", {}).get("type") for c in groq.calls]
    assert sent == ["json_schema", "json_object", None]
    assert router.modes.get("groq", "llama-3.1-8b-instant") == "prompt"
    assert redis_client.get(f"{RUN_PREFIX}:so:groq:llama-3.1-8b-instant") == b"prompt"


def test_a_refused_mode_on_the_repair_does_not_use_up_the_repair(fakes, redis_client) -> None:
    groq = fakes["groq"]
    seen: list[FakePrompt] = []

    def bad_then_no_json_schema(prompt: FakePrompt) -> str | dict[str, Any]:
        seen.append(prompt)
        if len(seen) == 1:
            groq.json_schema_unsupported = True  # from the next request on
            return "{not json"
        return follows_the_prompt(prompt)

    groq.responder = bad_then_no_json_schema
    router = router_for(fakes, redis_client, LLM_PROVIDERS="groq,google")
    routed = router.route(REQ)
    # the call: bad JSON; its repair: refused, then asked again in JSON mode, still a repair
    assert [(a.provider, a.outcome) for a in routed.attempts] == [
        ("groq", "invalid_output"), ("groq", "mode_unsupported"), ("groq", "ok")]
    assert [c.status for c in groq.calls] == [200, 400, 200]
    repair = groq.calls[-1].body["messages"]
    assert repair[-2] == {"role": "assistant", "content": "{not json"}
    assert "invalid" in repair[-1]["content"]
    assert fakes["google"].count() == 0


def test_the_memory_is_best_effort_when_redis_is_away(caplog) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    memory = ModeMemory(dead, prefix=RUN_PREFIX)
    with caplog.at_level(logging.WARNING):
        assert memory.get("groq", "m") is None  # the configured mode
        memory.degrade("groq", "m", "json_object")  # kept in this process
    assert memory.get("groq", "m") == "json_object"
    assert "Redis unavailable" in caplog.text


def test_two_workers_degrading_at_once_never_strengthen_the_mode(redis_client) -> None:
    a, b = ModeMemory(redis_client, prefix=RUN_PREFIX), ModeMemory(redis_client, prefix=RUN_PREFIX)
    a.degrade("p", "m", "prompt")
    b.degrade("p", "m", "json_object")  # b had not seen a's: Redis keeps the weaker one
    assert ModeMemory(redis_client, prefix=RUN_PREFIX).get("p", "m") == "prompt"
