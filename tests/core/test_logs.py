"""JSON logs: one object a line, LLM lines carry job id, stage, provider and attempt."""

from __future__ import annotations

import io
import json
import logging

from masterplan.llm.cooldowns import Cooldowns
from masterplan.llm.router import Route, Router
from masterplan.llm.stub import StubProvider
from masterplan.logs import setup_logging
from masterplan.personas import persona_request
from masterplan.ratelimit import TokenBucketLimiter
from tests.conftest import make_settings


def test_llm_lines_are_json_with_their_context() -> None:
    import dataclasses

    import fakeredis

    settings = make_settings({"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"})
    out = io.StringIO()
    setup_logging(settings, stream=out)
    try:
        r = fakeredis.FakeRedis()
        router = Router([Route(StubProvider(), settings.provider("stub"))],
                        TokenBucketLimiter(r, {}), Cooldowns(r))
        req = persona_request("risk", "an idea", None)
        router.route(dataclasses.replace(req, tags={**req.tags, "job_id": "job-1"}))
    finally:
        logging.getLogger().handlers = [h for h in logging.getLogger().handlers
                                        if not getattr(h, "_masterplan", False)]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    llm = [x for x in lines if x["logger"] == "masterplan.llm.router"]
    assert len(llm) == 1
    assert {k: llm[0][k] for k in ("job_id", "stage", "provider", "attempt", "outcome")} == {
        "job_id": "job-1", "stage": "risk", "provider": "stub", "attempt": 1, "outcome": "ok"}
