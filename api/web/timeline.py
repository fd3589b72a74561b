"""The geometry of a job's attempts timeline, drawn as inline SVG by the job page's template.

One lane per provider (the chain's order, then any other provider the ledger names); a bar per
attempt from its start to its end, its class saying how it ended. Attempts that overlap in time
on one provider (the five personas at once) are stacked in rows inside its lane, so none hides
another. Pure: ledger rows in, coordinates out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from api.routes.calls import CallPublic
from masterplan.llm.outcomes import CallOutcome as O

WIDTH = 720.0
LABEL_W = 104.0  # the provider names' column
RIGHT_PAD = 14.0
BAR_H = 10.0
ROW_GAP = 3.0
LANE_PAD = 6.0
AXIS_H = 22.0
MIN_BAR_W = 2.0  # a skip takes no time: still a visible mark

# Outcome -> the bar's class (the page's CSS colours them), and the legend's words.
_CATEGORY: dict[str, str] = {
    O.OK: "ok",
    O.RATE_LIMITED: "rate-limited", O.QUOTA_EXHAUSTED: "rate-limited",
    O.INVALID_OUTPUT: "invalid", O.MODE_UNSUPPORTED: "invalid",
    O.SKIPPED_COOLDOWN: "skipped", O.SKIPPED_RATELIMIT: "skipped", O.NEVER_FITS: "skipped",
    O.DEFERRED: "waited",
}
LEGEND = (("ok", "ok"), ("rate-limited", "rate limited"), ("error", "server error or failed"),
          ("invalid", "invalid output"), ("skipped", "skipped"), ("waited", "waited for the bucket"))


def category(outcome: str) -> str:
    """The legend entry of an outcome; every failure not named above is an error."""
    return _CATEGORY.get(outcome, "error")


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    category: str
    label: str  # the bar's tooltip and accessible name


@dataclass(frozen=True)
class Lane:
    provider: str
    y: float
    height: float


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Timeline:
    width: float
    height: float
    plot_x: float  # where time 0 is drawn
    lanes: list[Lane]
    bars: list[Bar]
    ticks: list[Tick]
    span_ms: int
    bar_h: float = BAR_H
    legend: tuple[tuple[str, str], ...] = LEGEND


def _seconds(ms: float) -> str:
    return f"{ms / 1000:.1f} s"


def _label(c: CallPublic, ms: float) -> str:
    parts = [c.stage, c.provider, c.outcome.replace("_", " "), _seconds(ms)]
    if c.input_tokens or c.output_tokens:
        parts.append(f"{c.input_tokens + c.output_tokens} tokens")
    if c.cost_usd:
        parts.append(f"${c.cost_usd:.6f}")
    return " · ".join(parts)


def layout(calls: Sequence[CallPublic], chain: Sequence[str] = ()) -> Timeline | None:
    """Where each attempt is drawn; None when there is none yet."""
    if not calls:
        return None
    t0 = min(c.started_at for c in calls)
    t1 = max(c.ended_at for c in calls)
    span_ms = max((t1 - t0).total_seconds() * 1000, 1.0)
    plot_w = WIDTH - LABEL_W - RIGHT_PAD

    def x_of(ms: float) -> float:
        return LABEL_W + ms / span_ms * plot_w

    named = {c.provider for c in calls}
    order = [p for p in chain if p in named]
    order += sorted(named - set(order), key=lambda p: min(c.started_at for c in calls if c.provider == p))
    lanes: list[Lane] = []
    bars: list[Bar] = []
    y = 0.0
    for provider in order:
        rows_end: list[float] = []  # the right edge of the last bar in each row
        placed: list[tuple[int, float, float, CallPublic, float]] = []
        for c in sorted((c for c in calls if c.provider == provider), key=lambda c: (c.started_at, c.id)):
            start_ms = (c.started_at - t0).total_seconds() * 1000
            ms = (c.ended_at - c.started_at).total_seconds() * 1000
            x, width = x_of(start_ms), max(ms / span_ms * plot_w, MIN_BAR_W)
            row = next((i for i, end in enumerate(rows_end) if end + 1 <= x), len(rows_end))
            if row == len(rows_end):
                rows_end.append(0.0)
            rows_end[row] = x + width
            placed.append((row, x, width, c, ms))
        height = LANE_PAD * 2 + len(rows_end) * BAR_H + (len(rows_end) - 1) * ROW_GAP
        lanes.append(Lane(provider, y, height))
        for row, x, width, c, ms in placed:
            bars.append(Bar(round(x, 2), round(y + LANE_PAD + row * (BAR_H + ROW_GAP), 2),
                            round(width, 2), category(c.outcome), _label(c, ms)))
        y += height
    ticks = [Tick(round(x_of(span_ms * f), 2), _seconds(span_ms * f)) for f in (0, 0.25, 0.5, 0.75, 1)]
    return Timeline(width=WIDTH, height=y + AXIS_H, plot_x=LABEL_W, lanes=lanes, bars=bars,
                    ticks=ticks, span_ms=int(span_ms))
