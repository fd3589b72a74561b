"""Configuration: flat variables, stripped secrets, one clear line for a bad value."""

from __future__ import annotations

import pytest

from masterplan.errors import ConfigError
from masterplan.settings import chain_summary, load_settings, provider_chain


def settings(**env: str):
    return load_settings(env, env_file=None)


def test_a_pasted_key_with_a_trailing_newline_works() -> None:
    s = settings(GROQ_API_KEY="gsk_abc123\n", API_KEYS=" k1 ,k2\n")
    assert s.provider("groq").api_key.get_secret_value() == "gsk_abc123"
    assert s.api_key_set() == {"k1", "k2"}
    assert "gsk_abc123" not in repr(s) and "gsk_abc123" not in str(s.provider("groq"))


def test_the_default_chain_is_the_providers_with_a_key_in_order() -> None:
    assert provider_chain(settings(GROQ_API_KEY="g", ANTHROPIC_API_KEY="a")) == ["anthropic", "groq"]
    assert provider_chain(settings()) == ["stub"]
    # The stub is never appended to a chain of real providers unless named.
    assert "stub" not in provider_chain(settings(GOOGLE_API_KEY="x"))
    assert provider_chain(settings(GOOGLE_API_KEY="x", LLM_PROVIDERS="google,stub")) == ["google", "stub"]


def test_custom_openai_compatible_providers_are_configured_by_name() -> None:
    s = settings(LLM_PROVIDERS="ollama", OLLAMA_BASE_URL="http://127.0.0.1:11434/v1",
                 OLLAMA_MODEL="llama3.2", OLLAMA_TPM="90000", OLLAMA_PRICE_IN="0.5")
    p = s.provider("ollama")
    assert (p.kind, p.model, p.tpm, p.rpm, p.price_in, p.api_key) == (
        "openai", "llama3.2", 90000, None, 0.5, None)
    assert chain_summary(s) == "provider chain: ollama(llama3.2, 90000 TPM/None RPM)"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"GROQ_TPM": "lots"}, "GROQ_TPM"),
        ({"GROQ_RPM": "-5"}, "GROQ_RPM"),
        ({"LLM_PROVIDERS": "anthropic,mystery"}, "MYSTERY_BASE_URL"),
        ({"LLM_PROVIDERS": "anthropic"}, "ANTHROPIC_API_KEY"),
        ({"MIN_PERSONAS": "nine"}, "MIN_PERSONAS"),
        ({"MIN_PERSONAS": "9"}, "MIN_PERSONAS"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"LLM_PROVIDERS": "groq,groq", "GROQ_API_KEY": "k"}, "LLM_PROVIDERS"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        settings(**env)


def test_services_default_to_the_embedded_mode() -> None:
    s = settings()
    assert s.embedded and s.broker_url == "memory://localhost/" and s.result_backend == "cache+memory://"
    r = settings(REDIS_URL="redis://h:6379/0\n")
    assert not r.embedded and r.broker_url == r.result_backend == "redis://h:6379/0"
