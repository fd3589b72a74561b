"""The templates and the headers every page and fragment is sent with.

Autoescaping is on for every template: an idea or a model output holding markup is shown as
text. The Content-Security-Policy allows scripts, styles and connections from this origin only
and no inline script or style at all, so even markup that got through could run nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jinja2

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
       "object-src 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # A page can hold one key's jobs: no shared cache keeps it.
    "Cache-Control": "no-store",
}


def usd(value: float | None) -> str:
    if value is None:
        return "—"
    return f"${value:.4f}" if value >= 0.01 or value == 0 else f"${value:.6f}"


def duration(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def number(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def iso(value: datetime | None) -> str:
    if value is None:
        return ""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def clock(value: datetime | None) -> str:
    """A UTC time of day, for the attempts table."""
    if value is None:
        return "—"
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).strftime("%H:%M:%S.%f")[:-3]


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("api.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(usd=usd, ms=duration, num=number, iso=iso, clock=clock)


def render(template: str, **context: Any) -> str:
    return _env.get_template(template).render(**context)
