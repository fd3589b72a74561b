"""The page in Chromium against the real API and a real worker: a job submitted from the form
goes live card by card to its masterplan, a fallback shows its badge and reason, markup from a
model is text, the key only ever travels as a header, a dropped stream resumes, and a finished
job reads without JavaScript."""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Any

import pytest

from masterplan.personas import PERSONA_KEYS
from testkit.fake_provider import FakePrompt, default_responder
from testkit.fake_wire import schema_answer
from testkit.procs import ROOT
from tests.web.conftest import ARTIFACTS, KEY, Tab, Web

pytestmark = pytest.mark.slow
DOCS_SHOT = ROOT / "docs" / "screenshot-job.png"
# Records, in the page itself, the order in which the cards reach each status.
WATCH_CARDS = """
window.__seen = {}; window.__done = [];
new MutationObserver(() => {
  for (const card of document.querySelectorAll("article.card")) {
    const seen = (window.__seen[card.id] ||= []);
    const status = card.dataset.status;
    if (seen[seen.length - 1] !== status) seen.push(status);
    if (status === "succeeded" && !window.__done.includes(card.id)) window.__done.push(card.id);
  }
}).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ["data-status"]});
"""


class Staggered:
    """The fake's own answers; the persona requests of a job are held so that the first to
    arrive finishes last, 0.6 s apart, none sooner than 0.8 s (the page is open by then)."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self, prompt: FakePrompt) -> str | dict[str, Any]:
        if prompt.schema_name == "PersonaOutput":
            with self.lock:
                n, self.n = self.n, self.n + 1
            time.sleep(0.8 + max(0, 4 - n) * 0.6)
        return default_responder(prompt)


def _stage_finish_order(web: Web, job_id: str) -> list[str]:
    from masterplan.db import queries as q

    with web.runtime.sessions() as s:
        runs = [r for r in q.stage_runs(s, job_id=job_id) if r.stage in PERSONA_KEYS]
    return [r.stage for r in sorted(runs, key=lambda r: r.finished_at)]


def test_a_job_from_the_form_goes_live_card_by_card_to_its_masterplan(fresh: Web, tab: Tab) -> None:
    fresh.fakes["anthropic"].responder = Staggered()
    page = tab.page
    page.context.add_init_script(WATCH_CARDS)
    page.goto(fresh.base + "/")
    assert page.is_visible("#key-form")
    tab.enter_key()
    page.fill("#idea", "a marketplace for used lab equipment")
    page.fill("#context", '{"region": "EU", "buyers": "university labs"}')
    page.click("button:has-text('Build the masterplan')")
    page.wait_for_url(f"{fresh.base}/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]

    page.wait_for_selector("#job[data-status=succeeded]", timeout=60_000)
    page.wait_for_selector("#verdict")

    # The cards reached done in the order the stages finished, each seen running first.
    done = page.evaluate("window.__done")
    assert done[:5] == [f"card-{s}" for s in _stage_finish_order(fresh, job_id)], done
    assert done[5:] == ["card-synthesis", "card-critique"]
    seen = page.evaluate("window.__seen")
    for stage in PERSONA_KEYS:
        assert seen[f"card-{stage}"][-2:] == ["running", "succeeded"], seen
    job = fresh.wait(job_id)
    plan, critique = job["synthesis"], job["critique"]
    assert page.inner_text("#masterplan h2") == "The masterplan"
    assert page.locator("#masterplan .components dt").all_inner_texts() == [
        c["name"] for c in plan["components"]]
    assert page.locator("#masterplan .roadmap > li").count() == len(plan["roadmap"])
    assert f"score {critique['score']}/10" in page.inner_text("#verdict")
    assert page.locator("#usage tbody tr").count() == len(job["usage"]["by_stage"])
    assert page.locator("#timeline rect.bar.o-ok").count() == 7
    assert page.locator(".badge.fallback").count() == 0  # anthropic, the first, answered all
    for stage in PERSONA_KEYS:
        assert page.locator(f"#card-{stage} .facts dd").first.inner_text() == "anthropic"

    # The key went as a header on every API call, never in a URL; one stream, no polling.
    api_calls = [r for r in tab.requests if "/v1/" in r.url or "/fragments/" in r.url]
    assert not [r.url for r in tab.requests if KEY in r.url]
    assert api_calls and all(r.headers.get("authorization") == f"Bearer {KEY}" for r in api_calls)
    streams = [r for r in api_calls if r.url.endswith(f"/v1/jobs/{job_id}/events")]
    assert len(streams) == 1
    assert sum("/fragments/jobs/" in r.url for r in api_calls) < 30

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "job.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        DOCS_SHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS_SHOT)
    assert not tab.errors, tab.errors


def test_a_stage_answered_by_the_second_provider_shows_a_fallback_badge_and_why(
        fresh: Web, tab: Tab) -> None:
    fresh.fakes["anthropic"].fail_next(100, status=503)
    job_id = fresh.submit("bike repair subscriptions")
    page = tab.page
    page.goto(f"{fresh.base}/jobs/{job_id}")
    tab.enter_key()

    page.wait_for_selector("#job[data-status=succeeded]", timeout=60_000)

    calls = fresh.calls(job_id)
    for stage in (*PERSONA_KEYS, "synthesis", "critique"):
        ok = next(c for c in calls if c["stage"] == stage and c["outcome"] == "ok")
        assert (ok["provider"], ok["fallback_from"]) == ("google", "anthropic")
        card = f"#card-{stage}"
        assert page.inner_text(f"{card} .badge.fallback") == "fallback"
        reason = page.inner_text(f"{card} .reason")
        assert "anthropic: " in reason, reason
        first = next(c for c in calls if c["stage"] == stage)
        assert first["provider"] == "anthropic"
        assert first["outcome"].replace("_", " ") in reason
    assert page.locator("#timeline rect.bar.o-error").count() >= 1
    assert not tab.errors, tab.errors


def test_markup_in_a_model_answer_and_in_the_idea_is_shown_as_text(fresh: Web, tab: Tab) -> None:
    markup = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'

    def hostile(prompt: FakePrompt) -> str | dict[str, Any]:
        answer = schema_answer(prompt)
        if prompt.schema_name == "PersonaOutput":
            answer["summary"] = markup + " buyers exist"
        return answer

    fresh.fakes["anthropic"].responder = hostile
    job_id = fresh.submit(f"lab gear {markup}")
    page = tab.page
    page.goto(f"{fresh.base}/jobs/{job_id}")
    tab.enter_key()
    page.wait_for_selector("#job[data-status=succeeded]", timeout=60_000)

    assert page.inner_text("#card-market .summary") == markup + " buyers exist"
    assert markup in page.inner_text("#job-head .idea")
    assert page.locator("#job script, #job img").count() == 0
    assert page.evaluate("window.__xss") is None
    assert not tab.errors, tab.errors


def test_a_dropped_stream_resumes_with_the_last_event_id(fresh: Web, tab: Tab) -> None:
    fresh.fakes["anthropic"].latency_s = 1.0
    job_id = fresh.submit("a dropped connection")
    page = tab.page
    streams: list[dict[str, str]] = []

    def events(route: Any) -> None:
        streams.append(route.request.headers)
        if len(streams) == 1:  # one event, then the connection ends as if dropped
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"},
                          body='id: first-seen\nevent: progress\ndata: {}\n\n')
        else:
            route.continue_()

    page.route(f"**/v1/jobs/{job_id}/events", events)
    page.goto(f"{fresh.base}/jobs/{job_id}")
    tab.enter_key()
    page.wait_for_selector("#job[data-status=succeeded]", timeout=60_000)

    assert len(streams) == 2, streams
    assert "last-event-id" not in streams[0]
    assert streams[1]["last-event-id"] == "first-seen"
    assert not tab.errors, tab.errors


def test_a_finished_job_reads_without_javascript_and_opens_no_stream(fresh: Web, browser: Any) -> None:
    job_id = fresh.submit("a finished job, read offline", keyed=False)
    job = fresh.wait(job_id, keyed=False)
    assert job["status"] == "succeeded"

    plain = browser.new_context(java_script_enabled=False, viewport={"width": 390, "height": 844})
    page = plain.new_page()
    page.goto(f"{fresh.open_base}/jobs/{job_id}")
    assert page.inner_text("#masterplan .lead") == job["synthesis"]["executive_summary"]
    assert f"score {job['critique']['score']}/10" in page.inner_text("#verdict")
    assert page.locator("article.card[data-status=succeeded]").count() == 7
    assert page.locator("#key-form").count() == 0  # no key to ask for
    # Phone width: the cards are one column, nothing wider than the screen.
    boxes = [page.locator(f"#card-{s}").bounding_box() for s in PERSONA_KEYS]
    assert len({b["x"] for b in boxes}) == 1
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "job-phone-no-js.png"), full_page=True)
    plain.close()

    scripted = browser.new_context()
    page = scripted.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{fresh.open_base}/jobs/{job_id}")
    page.wait_for_load_state("networkidle")
    assert [u for u in requests if "/v1/" in u or "/fragments/" in u] == []
    scripted.close()
