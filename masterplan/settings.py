"""Settings: one value object built at an entry point (API, worker, CLI) and passed in.

Flat environment variables, `.env` supported. Every secret is a `SecretStr` stripped of
surrounding whitespace, so a pasted key with a trailing newline works. A malformed value stops
start-up with one line naming the variable (`ConfigError`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from masterplan.errors import ConfigError

ProviderKind = Literal["anthropic", "openai", "stub"]


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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

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

    # Filled by load_settings from <NAME>_* variables; not read from the environment directly.
    providers: tuple[ProviderConfig, ...] = ()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_: object):  # type: ignore[no-untyped-def,override]
        # load_settings is the one reader of the environment and `.env`; it passes values in.
        return (init_settings,)

    @field_validator("api_keys", "flower_basic_auth", "metrics_token", "redis_url", "llm_providers",
                     mode="before")
    @classmethod
    def _strip(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip()
            return v or None
        return v


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


def env_lookup(environ: Mapping[str, str], env_file: str | None) -> dict[str, str]:
    merged: dict[str, str] = {}
    if env_file and os.path.exists(env_file):
        from dotenv import dotenv_values

        merged.update({k.upper(): v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update({k.upper(): v for k, v in environ.items()})
    return merged


def _num(env: Mapping[str, str], var: str, kind: type, default: object) -> object:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {kind.__name__}") from None
    if value < 0:
        raise ConfigError(f"{var}={raw!r} must not be negative")
    return value


def _secret(env: Mapping[str, str], var: str) -> SecretStr | None:
    raw = env.get(var, "").strip()
    return SecretStr(raw) if raw else None


def _provider(name: str, env: Mapping[str, str]) -> ProviderConfig:
    prefix = name.upper().replace("-", "_")
    known = KNOWN_PROVIDERS.get(name)
    base_url = env.get(f"{prefix}_BASE_URL", "").strip() or None
    if known is None and base_url is None:
        raise ConfigError(
            f"LLM_PROVIDERS names {name!r}, which is not a known provider "
            f"({', '.join(KNOWN_PROVIDERS)}) and has no {prefix}_BASE_URL"
        )
    d = known or ProviderDefaults("openai", "", base_url, 0.0, 0.0, None, None)
    model = env.get(f"{prefix}_MODEL", "").strip() or d.model
    if not model:
        raise ConfigError(f"{prefix}_MODEL is required for the custom provider {name!r}")
    return ProviderConfig(
        name=name,
        kind=d.kind,
        model=model,
        base_url=base_url or d.base_url,
        api_key=_secret(env, f"{prefix}_API_KEY"),
        price_in=float(_num(env, f"{prefix}_PRICE_IN", float, d.price_in)),  # type: ignore[arg-type]
        price_out=float(_num(env, f"{prefix}_PRICE_OUT", float, d.price_out)),  # type: ignore[arg-type]
        tpm=_num(env, f"{prefix}_TPM", int, d.tpm),  # type: ignore[arg-type]
        rpm=_num(env, f"{prefix}_RPM", int, d.rpm),  # type: ignore[arg-type]
        burst_tokens=_num(env, f"{prefix}_BURST_TOKENS", int, None),  # type: ignore[arg-type]
        burst_requests=_num(env, f"{prefix}_BURST_REQUESTS", int, None),  # type: ignore[arg-type]
        latency_ms=_num(env, f"{prefix}_LATENCY_MS", int, 0),  # type: ignore[arg-type]
    )


def _providers(chain: str | None, env: Mapping[str, str]) -> tuple[ProviderConfig, ...]:
    if chain:
        names = [n.strip().lower() for n in chain.split(",") if n.strip()]
        if len(set(names)) != len(names):
            raise ConfigError(f"LLM_PROVIDERS={chain!r} names a provider twice")
        providers = tuple(_provider(n, env) for n in names)
        for p in providers:
            if p.kind != "stub" and p.base_url is None and p.api_key is None:
                raise ConfigError(
                    f"LLM_PROVIDERS names {p.name!r} but {p.name.upper()}_API_KEY is not set"
                )
        return providers
    with_key = tuple(
        p for p in (_provider(n, env) for n in DEFAULT_CHAIN) if p.api_key is not None
    )
    return with_key or (_provider("stub", env),)


def load_settings(
    environ: Mapping[str, str] | None = None, *, env_file: str | None = ".env", **overrides: object
) -> Settings:
    """Build the settings from the environment (and `.env`). Raises ConfigError naming the variable."""
    env = env_lookup(os.environ if environ is None else environ, env_file)
    try:
        values = {k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields}
        values.pop("providers", None)
        settings = Settings.model_validate({**values, **overrides})
    except ValidationError as exc:
        err = exc.errors()[0]
        var = str(err["loc"][0]).upper() if err["loc"] else "settings"
        raise ConfigError(f"{var}: {err['msg']}") from None
    chain = settings.llm_providers
    return settings.model_copy(update={"providers": _providers(chain, env)})


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
