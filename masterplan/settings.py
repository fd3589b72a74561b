"""Settings: one value object built at an entry point (API, worker, CLI) and passed in.

pydantic-settings reads them, in this order: keyword overrides, the environment (or the mapping
given to `load_settings`), `.env`, then the caller's defaults. Flat variables; a provider's are
`<NAME>_*`, read by `ProviderEnv` with that prefix. Every secret is a `SecretStr` stripped of
surrounding whitespace, so a pasted key with a trailing newline works. A malformed value stops
start-up with one line naming the variable (`ConfigError`), never echoing a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator

from masterplan.errors import ConfigError
from masterplan.ratelimit.day import MAX_DAY_LIMIT, check_day_reset
from masterplan.ratelimit.limiter import LimitCounts
from masterplan.settings_sources import EnvSettings, Inputs, config_error, reading

ProviderKind = Literal["anthropic", "openai", "stub"]
# How a provider is asked for output that fits a schema, strongest first (masterplan/llm/
# structured.py): "json_schema" (response_format with the schema, strict where the provider
# enforces it), "tool" (Anthropic forced tool use), "json_object" (JSON mode: syntax only, the
# schema in the prompt), "prompt" (the schema in the prompt only).
StructuredOutput = Literal["json_schema", "json_object", "tool", "prompt"]

# Celery's time limits (workers/config.py applies them), kept here so that the settings check
# the LLM timeout against them without importing Celery. Ordered LLM timeout < soft < hard <
# broker visibility timeout: a slow call is cut by its own timeout first, a stuck task by the
# soft then the hard limit, and only a dead worker's task is redelivered by the broker.
SOFT_TIME_LIMIT_S = 300
HARD_TIME_LIMIT_S = 330
VISIBILITY_TIMEOUT_S = 3600


@dataclass(frozen=True)
class ProviderDefaults:
    kind: ProviderKind
    model: str
    base_url: str | None
    price_in: float  # USD per million input tokens
    price_out: float  # USD per million output tokens
    tpm: int | None
    rpm: int | None
    # The strongest structured output the provider offers (`<NAME>_STRUCTURED_OUTPUT`), and
    # whether its json_schema mode is strict (constrained decoding against the schema).
    structured_output: StructuredOutput = "json_object"
    schema_strict: bool = False
    # Requests and tokens per day (None: no daily cap), when the day resets ("rolling" or the
    # time zone of its midnight, masterplan/ratelimit/day.py), and whether the provider charges
    # what a call used or what it reserved (prompt + max_tokens) at admission.
    rpd: int | None = None
    tpd: int | None = None
    day_reset: str = "UTC"
    limit_counts: LimitCounts = "actual"
    # USD per million input tokens read from the provider's prompt cache, and written to it
    # (None: the input price, i.e. no discount and no surcharge).
    price_cached_in: float | None = None
    price_cache_write: float | None = None


# Free-tier limits where a free tier exists; prices from the providers' price lists.
# Daily caps only where the provider documents them for the default model's free tier (a cap
# set too high only costs the one daily 429 an unset cap costs; one set too low wastes quota):
# Groq's llama-3.1-8b-instant 14,400 RPD and 500,000 TPD, its day rolling (see ratelimit/day.py);
# Gemini 2.0 Flash 1,500 RPD in the table its 15 RPM / 1M TPM come from (no TPD), reset at
# midnight Pacific. Anthropic has no daily cap; OpenAI's depend on the account's usage tier.
# Settlement: OpenAI documents that its limiter counts max_tokens at admission ("reserved": no
# refund after the reply); Anthropic estimates output from max_tokens and adjusts it to the
# tokens really produced at the end ("actual"); Groq and Gemini document nothing else ("actual").
# Structured output: Anthropic has no JSON mode, forced tool use is its guarantee. OpenAI and
# Gemini's OpenAI-compatible endpoint take a strict json_schema. Groq serves json_schema on some
# models only, best effort (strict only on openai/gpt-oss-*, so strict is not sent), and answers
# the others (the default llama-3.1-8b-instant among them) "This model does not support response
# format `json_schema`": a 400 that costs no tokens, is retried at once in JSON mode and degrades
# that model for every worker (structured.ModeMemory). So the default is json_schema, and a
# Groq model that has it gets it; GROQ_STRUCTURED_OUTPUT=json_object skips the one refused call.
# Custom providers (an unknown name with a BASE_URL) get JSON mode, which nearly every
# OpenAI-compatible server has.
# Prompt caching (the price lists' multipliers of the input price): Anthropic's "Prompt caching"
# pricing, cache reads 0.1x and 5-minute cache writes 1.25x (writes are Anthropic's only, and
# only for a block marked cache_control); OpenAI's pricing page, gpt-4o-mini cached input
# $0.075/M = 0.5x (automatic, prompts of 1024 tokens and more); Gemini API pricing, gemini-2.0-
# flash cached input $0.025/M against $0.10/M = 0.25x (implicit caching); Groq's prompt-caching
# docs, cached input tokens at a 50% discount on the models that have it (0.5x).
KNOWN_PROVIDERS: dict[str, ProviderDefaults] = {
    "anthropic": ProviderDefaults("anthropic", "claude-haiku-4-5", None, 0.80, 4.00, 50_000, 50,
                                  structured_output="tool",
                                  price_cached_in=0.08, price_cache_write=1.00),
    "google": ProviderDefaults(
        "openai", "gemini-2.0-flash",
        "https://generativelanguage.googleapis.com/v1beta/openai/", 0.075, 0.30, 1_000_000, 15,
        structured_output="json_schema", schema_strict=True,
        rpd=1_500, day_reset="America/Los_Angeles", price_cached_in=0.075 * 0.25,
    ),
    "groq": ProviderDefaults(
        "openai", "llama-3.1-8b-instant", "https://api.groq.com/openai/v1", 0.06, 0.06, 6_000, 30,
        structured_output="json_schema",
        rpd=14_400, tpd=500_000, day_reset="rolling", price_cached_in=0.03,
    ),
    "openai": ProviderDefaults("openai", "gpt-4o-mini", None, 0.15, 0.60, 200_000, 500,
                               structured_output="json_schema", schema_strict=True,
                               limit_counts="reserved", price_cached_in=0.075),
    "stub": ProviderDefaults("stub", "stub-1", None, 0.0, 0.0, None, None,
                             structured_output="prompt"),
}
DEFAULT_CHAIN = ("anthropic", "google", "groq")


@dataclass(frozen=True)
class ProviderConfig:
    """One provider as configured. `api_key` is never logged or returned by the API."""

    name: str
    kind: ProviderKind
    model: str
    base_url: str | None
    api_key: SecretStr | None
    price_in: float
    price_out: float
    tpm: int | None
    rpm: int | None
    burst_tokens: int | None = None
    burst_requests: int | None = None
    latency_ms: int = 0  # the stub's simulated latency
    structured_output: StructuredOutput = "json_object"
    schema_strict: bool = False
    rpd: int | None = None
    tpd: int | None = None
    day_reset: str = "UTC"
    limit_counts: LimitCounts = "actual"
    # None: the input price.
    price_cached_in: float | None = None
    price_cache_write: float | None = None

    @property
    def has_key(self) -> bool:
        return self.api_key is not None

    def cost_usd(self, input_tokens: int, output_tokens: int, *, cached_input_tokens: int = 0,
                 cache_write_tokens: int = 0) -> float:
        """What a call cost. `input_tokens` counts every input token (`Usage`'s convention):
        the cached and cache-write ones are parts of it, priced at their own rates."""
        cached = min(cached_input_tokens, input_tokens)
        written = min(cache_write_tokens, input_tokens - cached)
        fresh = input_tokens - cached - written
        return (fresh * self.price_in + cached * _or(self.price_cached_in, self.price_in)
                + written * _or(self.price_cache_write, self.price_in)
                + output_tokens * self.price_out) / 1_000_000


# --- One provider: <NAME>_* -----------------------------------------------------------------------


def _prefix(name: str) -> str:
    return name.upper().replace("-", "_") + "_"


T = TypeVar("T")


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


class ProviderEnv(EnvSettings):
    """One provider's `<NAME>_*` variables, read with that prefix (`GROQ_TPM` is `tpm` here).
    Unset or blank means the provider's default (`KNOWN_PROVIDERS`)."""

    api_key: SecretStr | None = None
    base_url: str | None = None
    model: str | None = None
    price_in: float | None = Field(None, ge=0, allow_inf_nan=False)
    price_out: float | None = Field(None, ge=0, allow_inf_nan=False)
    price_cached_in: float | None = Field(None, ge=0, allow_inf_nan=False)
    price_cache_write: float | None = Field(None, ge=0, allow_inf_nan=False)
    tpm: int | None = Field(None, ge=0)
    rpm: int | None = Field(None, ge=0)
    burst_tokens: int | None = Field(None, ge=0)
    burst_requests: int | None = Field(None, ge=0)
    latency_ms: int | None = Field(None, ge=0)
    structured_output: StructuredOutput | None = None
    # 0 turns a known default daily cap off.
    rpd: int | None = Field(None, ge=0, le=MAX_DAY_LIMIT)
    tpd: int | None = Field(None, ge=0, le=MAX_DAY_LIMIT)
    day_reset: str | None = None
    limit_counts: LimitCounts | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        if isinstance(v, str):
            return v.strip() or None
        return v

    @field_validator("day_reset")
    @classmethod
    def _a_day_reset(cls, v: str | None) -> str | None:
        return None if v is None else check_day_reset(v)

    def config(self, name: str) -> ProviderConfig:
        """The provider as configured: these values over its known defaults."""
        prefix = _prefix(name)
        known = KNOWN_PROVIDERS.get(name)
        if known is None and self.base_url is None:
            raise ConfigError(
                f"LLM_PROVIDERS names {name!r}, which is not a known provider "
                f"({', '.join(KNOWN_PROVIDERS)}) and has no {prefix}BASE_URL"
            )
        d = known or ProviderDefaults("openai", "", self.base_url, 0.0, 0.0, None, None)
        model = self.model or d.model
        if not model:
            raise ConfigError(f"{prefix}MODEL is required for the custom provider {name!r}")
        structured = self.structured_output or d.structured_output
        if structured not in _STRUCTURED_BY_KIND[d.kind]:
            raise ConfigError(
                f"{prefix}STRUCTURED_OUTPUT={structured!r} does not apply to {name!r} (a "
                f"{d.kind} provider): use {' or '.join(_STRUCTURED_BY_KIND[d.kind])}")
        return ProviderConfig(
            name=name, kind=d.kind, model=model, base_url=self.base_url or d.base_url,
            api_key=self.api_key, price_in=_or(self.price_in, d.price_in),
            price_out=_or(self.price_out, d.price_out), tpm=_or(self.tpm, d.tpm),
            rpm=_or(self.rpm, d.rpm), burst_tokens=self.burst_tokens,
            burst_requests=self.burst_requests, latency_ms=_or(self.latency_ms, 0),
            structured_output=structured, schema_strict=d.schema_strict,
            rpd=_or(self.rpd, d.rpd) or None, tpd=_or(self.tpd, d.tpd) or None,
            day_reset=self.day_reset or d.day_reset,
            limit_counts=self.limit_counts or d.limit_counts,
            price_cached_in=_cache_price(self.price_cached_in, self.price_in, d.price_cached_in),
            price_cache_write=_cache_price(self.price_cache_write, self.price_in,
                                           d.price_cache_write),
        )


def _cache_price(own: float | None, price_in: float | None, default: float | None) -> float | None:
    """A cache price: its own variable; else, when <NAME>_PRICE_IN is set but it is not, None
    (the input price: a known default's discount is relative to the default input price, which
    no longer applies); else the default."""
    if own is not None:
        return own
    return None if price_in is not None else default


# The structured-output modes each kind of API can send.
_STRUCTURED_BY_KIND: dict[str, tuple[StructuredOutput, ...]] = {
    "anthropic": ("tool", "prompt"),
    "openai": ("json_schema", "json_object", "prompt"),
    "stub": ("prompt",),
}


def provider_variables(name: str) -> list[str]:
    """Every variable read for the provider `name`: `GROQ_API_KEY`, `GROQ_TPM`, ..."""
    return [f"{_prefix(name)}{f.upper()}" for f in ProviderEnv.model_fields]


def _chain_names(chain: str) -> list[str]:
    return [n.strip().lower() for n in chain.split(",") if n.strip()]


# --- Everything else -------------------------------------------------------------------------------


class Settings(EnvSettings):
    """The whole configuration. `load_settings` builds it, with the providers; `Settings()` alone
    reads the same variables but leaves `providers` empty."""

    redis_url: str | None = None
    # Prefix of every Redis key the system writes (buckets, cooldowns, broker queues), so that
    # several deployments or test runs can share one Redis.
    redis_key_prefix: str = Field("mp", pattern=r"^[A-Za-z0-9_.-]+$")
    celery_broker_url: str | None = None
    celery_result_backend: str | None = None
    database_url: str = "sqlite:///./masterplan.db"

    api_keys: SecretStr | None = None
    auth_disabled: bool = False
    # The API's own guards. /metrics answers only to METRICS_TOKEN (404 while it is unset), so
    # tenants' API keys never see other tenants' totals; /docs and /openapi.json can be hidden.
    metrics_token: SecretStr | None = None
    docs_enabled: bool = True
    # Bounded input, checked before anything is stored: the whole request body (enforced while
    # it is read), and the founder's `context` (nesting, keys per object, size as compact JSON).
    max_request_bytes: int = Field(256 * 1024, ge=1024)
    context_max_depth: int = Field(8, ge=1, le=64)
    context_max_keys: int = Field(200, ge=1)
    context_max_bytes: int = Field(64 * 1024, ge=1)

    llm_providers: str | None = None
    llm_timeout_s: float = Field(60.0, gt=0)
    # Every call is streamed (masterplan/llm/sdk.py): its reply must begin within
    # LLM_FIRST_TOKEN_TIMEOUT_S and no gap between its stream events may pass
    # LLM_STALL_TIMEOUT_S, so a silent provider costs seconds, not LLM_TIMEOUT_S. Both are at
    # most LLM_TIMEOUT_S (left unset, they shrink to it).
    llm_first_token_timeout_s: float = Field(10.0, gt=0)
    llm_stall_timeout_s: float = Field(15.0, gt=0)
    min_personas: int = Field(3, ge=1, le=5)
    persona_max_tokens: int = Field(1200, ge=16)
    synthesis_max_tokens: int = Field(2000, ge=16)
    critique_max_tokens: int = Field(800, ge=16)
    job_deadline_s: int = Field(900, gt=0)
    # A retried submission with the same Idempotency-Key returns the first job for this long;
    # after it, the key names a new submission.
    idempotency_ttl_s: int = Field(24 * 3600, ge=60)
    # Recovery: a running stage's lease (renewed by its worker every third of it); a job with
    # nothing done for STALL_AFTER_S is re-driven from its rows, at most MAX_REDRIVES times
    # (waiting twice as long before each next one); each worker sweeps every SWEEP_INTERVAL_S.
    stage_lease_s: float = Field(30.0, gt=0)
    stall_after_s: float = Field(30.0, gt=0)
    sweep_interval_s: float = Field(10.0, gt=0)
    max_redrives: int = Field(5, ge=1)
    circuit_failures: int = Field(3, ge=1)
    # CIRCUIT_FAILURES transient failures in a row open a provider's circuit for CIRCUIT_OPEN_S,
    # doubled at each further opening up to CIRCUIT_MAX_OPEN_S (masterplan/llm/cooldowns.py).
    circuit_open_s: float = Field(30.0, gt=0)
    circuit_max_open_s: float = Field(600.0, gt=0)
    auth_disable_s: int = Field(3600, ge=1)
    # Event streams (GET /v1/jobs/{id}/events), counted per API process: beyond a cap a new
    # stream gets 429. One watcher per process reads every watched job each STREAM_POLL_S; an
    # idle stream sends a comment every STREAM_HEARTBEAT_S so that proxies keep it open.
    max_streams_per_key: int = Field(20, ge=1)
    max_streams: int = Field(2000, ge=1)
    stream_poll_s: float = Field(0.25, gt=0)
    stream_heartbeat_s: float = Field(15.0, gt=0)

    # Fair share across API keys. A key may submit KEY_SUBMISSIONS_PER_MIN jobs a minute (beyond
    # it: 429 with Retry-After; 0 turns the limit off) and have KEY_MAX_JOBS_IN_FLIGHT running;
    # its further jobs wait `queued` in the database and are released as slots free, to the key
    # with the fewest jobs running first. MAX_JOBS_IN_FLIGHT caps the whole system (unset: no
    # cap). FAIR_HEADROOM is the share of each provider's bucket that a key's jobs beyond its
    # first may not take, so that another key's first job finds capacity at once.
    key_submissions_per_min: int = Field(60, ge=0)
    key_max_jobs_in_flight: int = Field(8, ge=1)
    max_jobs_in_flight: int | None = Field(None, ge=1)
    fair_headroom: float = Field(0.2, ge=0, lt=1)
    fair_window_s: float = Field(600.0, ge=0)
    # Cost ceilings (masterplan/budget.py): a job's, unless its submission names one (unset: no
    # ceiling), and a key's spend per UTC day, beyond which its submissions get 429.
    job_max_cost_usd: float | None = Field(None, gt=0)
    key_daily_budget_usd: float | None = Field(None, gt=0)

    # The interview (masterplan/conversation.py). Its turns run on the `interactive` queue; while
    # any interview was active in the last INTERACTIVE_WINDOW_S, masterplan jobs' calls must
    # leave INTERACTIVE_SHARE of each provider bucket to interview turns, so that a turn starts
    # streaming promptly behind a backlog. A turn's events stay in Redis for
    # INTERVIEW_STREAM_TTL_S after it ends (a client may resume them); a turn not finished
    # within INTERVIEW_TURN_TIMEOUT_S is failed as lost.
    interview_max_turns: int = Field(8, ge=1, le=50)
    interview_question_max_tokens: int = Field(300, ge=16)
    interview_eval_max_tokens: int = Field(900, ge=16)
    interactive_share: float = Field(0.25, ge=0, lt=1)
    interactive_window_s: float = Field(900.0, ge=0)
    interview_stream_ttl_s: int = Field(3600, ge=10)
    interview_turn_timeout_s: float = Field(300.0, gt=0)

    flower_basic_auth: SecretStr | None = None
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    # Filled by load_settings from the <NAME>_* variables (ProviderEnv): not a field, so that no
    # source ever reads a PROVIDERS variable.
    _providers: tuple[ProviderConfig, ...] = PrivateAttr(())

    @field_validator("api_keys", "flower_basic_auth", "metrics_token", "redis_url", "llm_providers",
                     mode="before")
    @classmethod
    def _strip(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip()
            return v or None
        return v

    @field_validator("llm_providers")
    @classmethod
    def _each_provider_once(cls, v: str | None) -> str | None:
        if v is not None and len(set(_chain_names(v))) != len(_chain_names(v)):
            raise ValueError(f"LLM_PROVIDERS={v!r} names a provider twice")
        return v

    @model_validator(mode="after")
    def _timeout_below_the_time_limits(self) -> Settings:
        # A call must be cut by its own timeout before Celery cuts the task that makes it.
        if not self.llm_timeout_s < SOFT_TIME_LIMIT_S < HARD_TIME_LIMIT_S < VISIBILITY_TIMEOUT_S:
            raise ValueError(
                f"LLM_TIMEOUT_S={self.llm_timeout_s:g} must be below the task soft time limit "
                f"({SOFT_TIME_LIMIT_S} s; hard limit {HARD_TIME_LIMIT_S} s, broker visibility "
                f"timeout {VISIBILITY_TIMEOUT_S} s)")
        for name in ("llm_first_token_timeout_s", "llm_stall_timeout_s"):
            if getattr(self, name) <= self.llm_timeout_s:
                continue
            if name not in self.model_fields_set:  # a default above a short LLM_TIMEOUT_S
                setattr(self, name, self.llm_timeout_s)
                continue
            raise ValueError(f"{name.upper()}={getattr(self, name):g} must not be above "
                             f"LLM_TIMEOUT_S={self.llm_timeout_s:g}")
        if self.circuit_max_open_s < self.circuit_open_s:
            raise ValueError(f"CIRCUIT_MAX_OPEN_S={self.circuit_max_open_s:g} must not be below "
                             f"CIRCUIT_OPEN_S={self.circuit_open_s:g}")
        return self

    @property
    def providers(self) -> tuple[ProviderConfig, ...]:
        """The configured providers, in chain order."""
        return self._providers

    @property
    def embedded(self) -> bool:
        """No Redis configured: in-memory broker, fakeredis, in-process worker."""
        return self.redis_url is None

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url or "memory://localhost/"

    @property
    def result_backend(self) -> str:
        return self.celery_result_backend or self.redis_url or "cache+memory://"

    def api_key_set(self) -> frozenset[str]:
        if self.api_keys is None:
            return frozenset()
        return frozenset(k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip())

    def provider(self, name: str) -> ProviderConfig:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(name)


# --- Building them ----------------------------------------------------------------------------------


def _read_provider(name: str, inputs: Inputs, overrides: Mapping[str, Any]) -> ProviderConfig:
    prefix = _prefix(name)
    own = {k[len(prefix):]: v for k, v in overrides.items() if k.upper().startswith(prefix)}
    with reading(replace(inputs, prefix=prefix)):
        try:
            env = ProviderEnv(**own)
        except ValidationError as exc:
            raise config_error(exc, prefix, show_value=True) from None
    return env.config(name)


def _providers(chain: str | None, inputs: Inputs,
               overrides: Mapping[str, Any]) -> tuple[ProviderConfig, ...]:
    if chain:
        providers = tuple(_read_provider(n, inputs, overrides) for n in _chain_names(chain))
        for p in providers:
            if p.kind != "stub" and p.base_url is None and p.api_key is None:
                raise ConfigError(
                    f"LLM_PROVIDERS names {p.name!r} but {_prefix(p.name)}API_KEY is not set")
        return providers
    with_key = tuple(p for p in (_read_provider(n, inputs, overrides) for n in DEFAULT_CHAIN)
                     if p.api_key is not None)
    return with_key or (_read_provider("stub", inputs, overrides),)


def load_settings(
    environ: Mapping[str, str] | None = None, *, env_file: str | None = ".env",
    defaults: Mapping[str, str] | None = None, **overrides: Any,
) -> Settings:
    """Build the settings, providers included. Raises ConfigError naming the variable.

    `environ` stands in for the process environment, whose values are then not used;
    `env_file=None` reads no `.env`. `overrides` win over both: fields by name
    (`auth_disabled=True`) and providers' variables in lower case (`stub_latency_ms=400`).
    `defaults` lose to both: variables by name (`{"STUB_LATENCY_MS": "400"}`).
    """
    own = {k: v for k, v in overrides.items() if k in Settings.model_fields}
    unknown = [k for k in overrides if k not in own
               and not any(k.endswith(f"_{f}") for f in ProviderEnv.model_fields)]
    if unknown:
        raise TypeError(f"load_settings() got unknown overrides: {', '.join(unknown)}")
    inputs = Inputs(environ, env_file, defaults or {})
    with reading(inputs):
        try:
            settings = Settings(**own)
        except ValidationError as exc:
            raise config_error(exc) from None
    settings._providers = _providers(settings.llm_providers, inputs, overrides)
    return settings


def provider_chain(settings: Settings) -> list[str]:
    """THE order of the chain. Router, `/v1/providers` and start-up logs all use this."""
    return [p.name for p in settings.providers]


def chain_summary(settings: Settings) -> str:
    """One line for start-up logs: the chain the router will use, with the limits in force."""
    parts = []
    for p in settings.providers:
        limits = f"{p.tpm} TPM/{p.rpm} RPM" if p.tpm or p.rpm else "unlimited"
        parts.append(f"{p.name}({p.model}, {limits})")
    return "provider chain: " + " -> ".join(parts)
