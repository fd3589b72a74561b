"""A provider's daily caps and settlement, from its `<NAME>_*` variables to its buckets."""

from __future__ import annotations

from typing import Any

import pytest

from masterplan.errors import ConfigError
from masterplan.llm.registry import bucket_limits
from masterplan.ratelimit import BucketLimits
from masterplan.settings import load_settings


def settings(**env: str) -> Any:
    return load_settings({"LLM_PROVIDERS": "anthropic,google,groq,openai", "ANTHROPIC_API_KEY": "a",
                          "GOOGLE_API_KEY": "g", "GROQ_API_KEY": "q", "OPENAI_API_KEY": "o", **env},
                         env_file=None)


def test_known_providers_cap_their_day_and_settle_as_they_charge() -> None:
    limits = bucket_limits(settings())
    assert limits["groq"] == BucketLimits(tpm=6_000, rpm=30, tpd=500_000, rpd=14_400,
                                          day_reset="rolling", counts="actual")
    assert limits["google"] == BucketLimits(tpm=1_000_000, rpm=15, rpd=1_500,
                                            day_reset="America/Los_Angeles", counts="actual")
    assert limits["openai"] == BucketLimits(tpm=200_000, rpm=500, counts="reserved")
    assert not limits["anthropic"].daily and limits["anthropic"].counts == "actual"


def test_the_variables_override_the_defaults_and_zero_turns_a_cap_off() -> None:
    s = settings(GROQ_RPD="0", GROQ_TPD="1000", GROQ_DAY_RESET="UTC", GROQ_LIMIT_COUNTS="reserved",
                 OPENAI_RPD="10000", OPENAI_LIMIT_COUNTS="actual")
    groq, openai = s.provider("groq"), s.provider("openai")
    assert (groq.rpd, groq.tpd, groq.day_reset, groq.limit_counts) == (None, 1000, "UTC", "reserved")
    assert (openai.rpd, openai.day_reset, openai.limit_counts) == (10_000, "UTC", "actual")
    # A provider with only a daily cap still gets buckets (the minute ones as large as allowed).
    only_day = load_settings({"LLM_PROVIDERS": "stub", "STUB_RPD": "50"}, env_file=None)
    assert bucket_limits(only_day)["stub"].rpd == 50


@pytest.mark.parametrize(("variable", "value"), [
    ("GOOGLE_DAY_RESET", "Pacific/Nowhere"),
    ("GROQ_LIMIT_COUNTS", "sometimes"),
    ("GROQ_TPD", "1000000000"),
    ("GROQ_RPD", "-1"),
])
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        settings(**{variable: value})
