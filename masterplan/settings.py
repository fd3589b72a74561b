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
from masterplan.settings_sources import EnvSettings, Inputs, config_error, reading

ProviderKind = Literal["anthropic", "openai", "stub"]

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


# Free-tier limits where a free tier exists; prices from the providers' price lists.
KNOWN_PROVIDERS: dict[str, ProviderDefaults] = {
    "anthropic": ProviderDefaults("anthropic", "claude-haiku-4-5", None, 0.80, 4.00, 50_000, 50),
    "google": ProviderDefaults(
        "openai", "gemini-2.0-flash",
        "https://generativelanguage.googleapis.com/v1beta/openai/", 0.075, 0.30, 1_000_000, 15,
    ),
    "groq": ProviderDefaults(
        "openai", "llama-3.1-8b-instant", "https://api.groq.com/openai/v1", 0.06, 0.06, 6_000, 30
    ),
    "openai": ProviderDefaults("openai", "gpt-4o-mini", None, 0.15, 0.60, 200_000, 500),
    "stub": ProviderDefaults("stub", "stub-1", None, 0.0, 0.0, None, None),
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

    @property
    def has_key(self) -> bool:
        return self.api_key is not None

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.price_in + output_tokens * self.price_out) / 1_000_000


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
    tpm: int | None = Field(None, ge=0)
    rpm: int | None = Field(None, ge=0)
    burst_tokens: int | None = Field(None, ge=0)
    burst_requests: int | None = Field(None, ge=0)
    latency_ms: int | None = Field(None, ge=0)

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        if isinstance(v, str):
            return v.strip() or None
        return v

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
        return ProviderConfig(
            name=name, kind=d.kind, model=model, base_url=self.base_url or d.base_url,
            api_key=self.api_key, price_in=_or(self.price_in, d.price_in),
            price_out=_or(self.price_out, d.price_out), tpm=_or(self.tpm, d.tpm),
            rpm=_or(self.rpm, d.rpm), burst_tokens=self.burst_tokens,
            burst_requests=self.burst_requests, latency_ms=_or(self.latency_ms, 0),
        )


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
    circuit_open_s: int = Field(30, ge=1)
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
