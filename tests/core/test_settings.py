"""Configuration: flat variables, stripped secrets, one clear line for a bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from masterplan.errors import ConfigError
from masterplan.settings import (
    HARD_TIME_LIMIT_S,
    SOFT_TIME_LIMIT_S,
    VISIBILITY_TIMEOUT_S,
    chain_summary,
    load_settings,
    provider_chain,
)
from testkit.procs import clean_env


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


def test_secrets_never_appear_in_an_error() -> None:
    with pytest.raises(ConfigError) as bad:
        settings(GROQ_API_KEY="gsk_secret123", API_KEYS="k-secret456", GROQ_TPM="lots")
    assert "GROQ_TPM" in str(bad.value)
    assert "gsk_secret123" not in str(bad.value) and "k-secret456" not in str(bad.value)


def test_a_providers_variables_are_read_with_its_prefix_from_dotenv(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("GROQ_API_KEY=' gsk_from_file '\nGROQ_TPM=1234\nGROQ_BURST_TOKENS=500\n"
                        "MY_LLM_BASE_URL=http://127.0.0.1:9/v1\nMY_LLM_MODEL=m1\nJOB_DEADLINE_S=77\n")

    s = load_settings({"GROQ_RPM": "9", "GROQ_TPM": "99"}, env_file=str(env_file))

    groq = s.provider("groq")
    assert groq.api_key is not None and groq.api_key.get_secret_value() == "gsk_from_file"
    # the environment wins over .env; what neither sets keeps the provider's default
    assert (groq.tpm, groq.rpm, groq.burst_tokens, groq.model) == (99, 9, 500, "llama-3.1-8b-instant")
    assert s.job_deadline_s == 77
    custom = load_settings({"LLM_PROVIDERS": "my-llm"}, env_file=str(env_file)).provider("my-llm")
    assert (custom.base_url, custom.model) == ("http://127.0.0.1:9/v1", "m1")
    # env_file=None: no .env
    assert provider_chain(load_settings({}, env_file=None)) == ["stub"]


def test_the_llm_timeout_must_be_below_the_task_time_limits() -> None:
    assert settings(LLM_TIMEOUT_S=str(SOFT_TIME_LIMIT_S - 1)).llm_timeout_s == SOFT_TIME_LIMIT_S - 1
    with pytest.raises(ConfigError) as bad:
        settings(LLM_TIMEOUT_S=str(SOFT_TIME_LIMIT_S))
    assert str(bad.value) == (
        f"LLM_TIMEOUT_S={SOFT_TIME_LIMIT_S} must be below the task soft time limit "
        f"({SOFT_TIME_LIMIT_S} s; hard limit {HARD_TIME_LIMIT_S} s, broker visibility timeout "
        f"{VISIBILITY_TIMEOUT_S} s)")
    assert SOFT_TIME_LIMIT_S < HARD_TIME_LIMIT_S < VISIBILITY_TIMEOUT_S


def test_a_given_environment_stands_in_for_the_process_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_DEADLINE_S", "-1")
    monkeypatch.setenv("GROQ_API_KEY", "gsk_from_the_process")
    s = settings(MIN_PERSONAS="2")
    assert (s.job_deadline_s, s.min_personas, provider_chain(s)) == (900, 2, ["stub"])


def test_overrides_win_and_defaults_give_way() -> None:
    env = {"STUB_LATENCY_MS": "7", "AUTH_DISABLED": "false"}
    s = load_settings(env, env_file=None, auth_disabled=True, stub_latency_ms=400)
    assert s.auth_disabled and s.provider("stub").latency_ms == 400
    defaults = {"STUB_LATENCY_MS": "400", "AUTH_DISABLED": "true"}
    s = load_settings(env, env_file=None, defaults=defaults)
    assert not s.auth_disabled and s.provider("stub").latency_ms == 7
    s = load_settings({}, env_file=None, defaults=defaults)
    assert s.auth_disabled and s.provider("stub").latency_ms == 400
    with pytest.raises(TypeError, match="job_dealine_s"):
        load_settings({}, env_file=None, job_dealine_s=5)


def test_the_cli_passes_its_defaults_without_touching_os_environ(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from workers.cli import command_settings

    monkeypatch.chdir(tmp_path)  # no .env
    for var in ("STUB_LATENCY_MS", "AUTH_DISABLED", "LLM_PROVIDERS", "ANTHROPIC_API_KEY",
                "GOOGLE_API_KEY", "GROQ_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    before = dict(os.environ)

    demo, dev = command_settings("demo"), command_settings("dev", quiet_logs=False)

    assert demo.provider("stub").latency_ms == 400 and demo.log_level == "WARNING"
    assert dev.auth_disabled and dev.provider("stub").latency_ms == 0
    assert dict(os.environ) == before
    # what the user sets still wins
    monkeypatch.setenv("STUB_LATENCY_MS", "0")
    assert command_settings("demo").provider("stub").latency_ms == 0


def _python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(**env),
                          capture_output=True, text=True, timeout=120)


def test_importing_workers_or_the_api_factory_reads_no_setting(tmp_path: Path) -> None:
    ok = _python("import workers, workers.celery_app, workers.config, workers.runtime, "
                 "workers.cli, workers.flower, api.factory", tmp_path, JOB_DEADLINE_S="-1")
    assert ok.returncode == 0, ok.stderr
    # Celery's `-A workers` asks for `workers.app`: that reads them, and stops on a bad one
    for code in ("import workers; workers.app", "import api.main"):
        bad = _python(code, tmp_path, JOB_DEADLINE_S="-1", API_KEYS="k")
        assert bad.returncode == 2, bad.stderr
        assert bad.stderr.strip().splitlines()[-1] == (
            "configuration error: JOB_DEADLINE_S: Input should be greater than 0")


@pytest.mark.slow
def test_a_whole_demo_leaves_os_environ_as_it_was(tmp_path: Path) -> None:
    r = _python("import os, sys\n"
                "from workers import cli\n"
                "before = dict(os.environ)\n"
                "code = cli.main(['demo', 'a tool library'])\n"
                "sys.exit(code or (3 if dict(os.environ) != before else 0))", tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "succeeded" in r.stdout


def test_cached_input_is_priced_at_its_own_rate_and_defaults_to_the_input_price() -> None:
    s = settings(LLM_PROVIDERS="anthropic,openai,ollama", ANTHROPIC_API_KEY="x",
                 OPENAI_API_KEY="y", OPENAI_PRICE_IN="2.0",
                 OLLAMA_BASE_URL="http://127.0.0.1:11434/v1", OLLAMA_MODEL="m",
                 OLLAMA_PRICE_IN="1.0", OLLAMA_PRICE_CACHED_IN="0.25")
    anthropic, openai, ollama = (s.provider(n) for n in ("anthropic", "openai", "ollama"))
    # Anthropic's list: reads 0.1x, writes 1.25x the input price; parts of input_tokens here.
    assert anthropic.cost_usd(1_000_000, 0, cached_input_tokens=600_000,
                              cache_write_tokens=200_000) == pytest.approx(
        0.2 * 0.80 + 0.6 * 0.08 + 0.2 * 1.00)
    # PRICE_IN set and no PRICE_CACHED_IN: the known discount no longer applies.
    assert openai.cost_usd(1_000_000, 0, cached_input_tokens=500_000) == pytest.approx(2.0)
    assert ollama.cost_usd(1_000_000, 0, cached_input_tokens=500_000) == pytest.approx(0.625)
    assert ollama.cost_usd(1_000_000, 1_000_000) == ollama.cost_usd(1_000_000, 1_000_000,
                                                                    cached_input_tokens=0)
