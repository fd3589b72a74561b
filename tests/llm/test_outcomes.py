"""One vocabulary of ledger outcomes; each error class says what its failure means."""

from __future__ import annotations

import json

import pytest

from masterplan import errors as E
from masterplan.llm.outcomes import SKIPS, CallOutcome
from masterplan.llm.router import Attempt, reasons


def provider_errors() -> list[type[E.ProviderError]]:
    return [E.ProviderError, *E.ProviderError.__subclasses__()]


def test_every_provider_error_has_its_own_outcome() -> None:
    outcomes = [cls.outcome for cls in provider_errors()]
    assert all(isinstance(o, CallOutcome) for o in outcomes)
    assert len(set(outcomes)) == len(outcomes)
    assert not set(outcomes) & SKIPS and CallOutcome.OK not in outcomes


def test_outcomes_are_the_words_stored_and_shown() -> None:
    # Rows, logs, JSON and the metrics' labels keep the plain strings.
    assert CallOutcome.RATE_LIMITED == "rate_limited" and f"{CallOutcome.LOST}" == "lost"
    assert json.dumps({"outcome": CallOutcome.SKIPPED_COOLDOWN}) == '{"outcome": "skipped_cooldown"}'
    assert "never_fits" in SKIPS and CallOutcome("deferred") is CallOutcome.DEFERRED
    assert CallOutcome.SKIPPED_RATELIMIT.is_skip and not CallOutcome.DEFERRED.is_skip


@pytest.mark.parametrize(("cls", "transient", "wait_ms", "benches"), [
    (E.RateLimited, True, 1000, False),
    (E.Overloaded, True, None, False),  # only its own Retry-After: see errors.py
    (E.ServerError, True, None, False),
    (E.ProviderTimeout, True, None, False),
    (E.AuthError, False, None, True),
    (E.QuotaExhausted, False, None, True),
    (E.BadRequest, False, None, False),
    (E.InvalidOutput, False, None, False),
])
def test_each_error_class_says_if_retrying_is_worth_it_and_after_how_long(
        cls: type[E.ProviderError], transient: bool, wait_ms: int | None, benches: bool) -> None:
    err = cls("x")
    assert (err.transient, err.wait_ms, err.benches) == (transient, wait_ms, benches)


def test_the_providers_own_wait_comes_before_the_default() -> None:
    assert E.RateLimited("x", retry_after_ms=2500).wait_ms == 2500
    assert E.Overloaded("x", retry_after_ms=700).wait_ms == 700
    # A retry-after on a failure not worth waiting for does not make it one.
    assert E.BadRequest("x", retry_after_ms=700).wait_ms is None
    # A quota that names its reset sits out until then; otherwise for the configured time.
    assert E.QuotaExhausted("x", retry_after_ms=90_000).bench_ms == 90_000
    assert E.QuotaExhausted("x").bench_ms is None and E.AuthError("x", retry_after_ms=5).bench_ms is None


def test_reasons_name_each_providers_last_trouble() -> None:
    attempts = [Attempt("a", "m", CallOutcome.SERVER_ERROR, error="HTTP 500"),
                Attempt("b", "m", CallOutcome.OK), Attempt("a", "m", CallOutcome.SKIPPED_COOLDOWN)]
    assert reasons(attempts) == {"a": "skipped_cooldown"}
