"""The web page, served by the API itself: submit an idea, watch the agents, read the plan.

Server-rendered HTML (Jinja2, autoescaped: every idea and model output is untrusted text), one
small stylesheet and one small script shipped inside the package, no build step.
"""

from __future__ import annotations

from api.web.pages import install

__all__ = ["install"]
