"""The timeline's geometry: lanes in chain order, a bar per attempt spanning its time, attempts
that overlap on one provider stacked instead of hidden, every outcome in the legend's words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from api.routes.calls import CallPublic
from api.web.timeline import BAR_H, LABEL_W, MIN_BAR_W, RIGHT_PAD, WIDTH, category, layout

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def attempt(n: int, provider: str, outcome: str, start_s: float, ms: int) -> CallPublic:
    start = T0 + timedelta(seconds=start_s)
    return CallPublic(id=n, stage="market", provider=provider, model="m", outcome=outcome,
                      error_class=None, error=None, input_tokens=10, output_tokens=5,
                      cached_input_tokens=0, cache_write_tokens=0, cost_usd=0.0, latency_ms=ms,
                      wait_ms=0, fallback_from=None, started_at=start,
                      ended_at=start + timedelta(milliseconds=ms), started_estimated=False)


def test_bars_span_their_attempts_in_lanes_of_the_chain_order() -> None:
    calls = [attempt(1, "google", "ok", 1.0, 3000), attempt(2, "anthropic", "server_error", 0.0, 1000),
             attempt(3, "anthropic", "skipped_cooldown", 4.0, 0)]

    t = layout(calls, ["anthropic", "google", "groq"])

    assert t is not None and t.span_ms == 4000
    assert [lane.provider for lane in t.lanes] == ["anthropic", "google"]  # groq made no attempt
    plot = WIDTH - LABEL_W - RIGHT_PAD
    failed, skipped, ok = sorted(t.bars, key=lambda b: (b.y, b.x))
    assert (failed.x, failed.width) == (LABEL_W, round(plot / 4, 2))
    assert skipped.width == MIN_BAR_W and skipped.x == round(LABEL_W + plot, 2)
    assert ok.x == round(LABEL_W + plot / 4, 2) and ok.width == round(plot * 3 / 4, 2)
    assert ok.y >= t.lanes[1].y and failed.y < t.lanes[1].y
    assert (failed.category, skipped.category, ok.category) == ("error", "skipped", "ok")
    assert [tick.label for tick in t.ticks] == ["0.0 s", "1.0 s", "2.0 s", "3.0 s", "4.0 s"]


def test_overlapping_attempts_on_one_provider_are_stacked_and_sequential_ones_share_a_row() -> None:
    calls = [attempt(i, "anthropic", "ok", 0.0 + i * 0.01, 1000) for i in range(5)]
    calls.append(attempt(9, "anthropic", "ok", 2.0, 500))

    t = layout(calls)

    assert t is not None and len(t.lanes) == 1
    rows = sorted({b.y for b in t.bars})
    assert len(rows) == 5  # five at once, and the later one fits in the first row again
    late = next(b for b in t.bars if b.label.endswith("0.5 s · 15 tokens"))
    assert late.y == rows[0]
    assert t.lanes[0].height >= 5 * BAR_H


def test_every_outcome_has_a_legend_entry_and_no_attempts_draw_nothing() -> None:
    assert layout([]) is None
    words = {
        "ok": "ok", "rate_limited": "rate-limited", "quota_exhausted": "rate-limited",
        "server_error": "error", "overloaded": "error", "timeout": "error", "lost": "error",
        "invalid_output": "invalid", "skipped_cooldown": "skipped",
        "skipped_ratelimit": "skipped", "never_fits": "skipped", "deferred": "waited",
    }
    assert {o: category(o) for o in words} == words
