"""The interview's chat page. In Chromium against the real API and a real worker (the fake
providers answering): an interview started from `/`, its questions streaming in token by token,
the scores and the quick replies, answers by click and by keyboard, a score's move, markup in an
answer shown as text, a dropped turn stream resumed with Last-Event-ID, the masterplan built from
it. Through the app alone (no browser): who may read an interview's fragment, the headers, the
escaping, a finished interview rendered whole when the server can read it."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from markupsafe import escape

from api.deps import ANONYMOUS, owner_of
from api.web.render import CSP
from masterplan.db.models import Interview, InterviewStatus, InterviewTurn, TurnStatus, utcnow
from masterplan.interview import SCORES
from testkit.fake_provider import FakePrompt, default_responder
from testkit.procs import ROOT
from tests.api.app_client import Api, api_client
from tests.web.conftest import ARTIFACTS, AUTH, KEY, Tab, Web
from tests.web.test_pages import Tags

DOCS_SHOT = ROOT / "docs" / "screenshot-interview.png"
MARKUP = '<img src=x onerror="window.__xss = 1"><script>window.__xss = 2</script>'
QUESTIONS = (
    "Who has this problem most painfully today, and how do they solve it now?",
    "What would make them switch to you in the first month?",
    "How big is the first market you can reach without paid ads?",
    "What is the hardest part to build, and what would you buy instead of build?",
    "Who pays, how much, and how often?",
    "What has to be true in 90 days for you to keep going?",
)


# -- without a browser -----------------------------------------------------------------------
@pytest.fixture
def api(pg_migrated: str) -> Iterator[Api]:
    with api_client(pg_migrated) as a:
        yield a


@pytest.fixture
def open_api(pg_migrated: str) -> Iterator[Api]:
    with api_client(pg_migrated, {"AUTH_DISABLED": "true"}) as a:
        yield a


def _eval(base: int, moved: int) -> dict[str, Any]:
    return {name: {"score": base + i % 2, "reason": f"{name} reason", "moved": moved}
            for i, name in enumerate(SCORES)}


def store_interview(rt: Any, *, owner: str, idea: str = "a marketplace for used lab equipment",
                    answers: tuple[str, ...] = ("Small labs", "Price"), done: bool = False,
                    null_last: bool = False) -> str:
    """An interview as the workers would have left it: a turn per answer (plus the first), each
    done with its structured part (the last one's `null` with `null_last`)."""
    now = utcnow()
    iid = str(uuid.uuid4())
    turns = [None, *answers]
    tracked = [{"statement": "Labs resell idle gear <b>often</b>", "status": "confirmed",
                "since": 1, "changed": True}]
    with rt.sessions.begin() as s:
        s.add(Interview(id=iid, owner=owner, idea=idea, created_at=now, updated_at=now,
                        status=(InterviewStatus.DONE if done else InterviewStatus.OPEN).value,
                        evaluation=_eval(3 + len(answers), 1 if answers else 0),
                        assumptions={"items": tracked}))
        s.flush()
        for n, answer in enumerate(turns, 1):
            last = n == len(turns)
            structured = None if (last and null_last) else {
                "eval": _eval(2 + n, 1 if n > 1 else 0), "assumptions": tracked,
                "choices": [f"choice {n}a", f"choice {n}b <i>x</i>"], "done": done and last}
            s.add(InterviewTurn(interview_id=iid, n=n, answer=answer, question=f"Question {n}?",
                                structured=structured, status=TurnStatus.DONE.value,
                                structured_error="every provider failed" if structured is None
                                else None, created_at=now, finished_at=now,
                                usage={"calls": 2, "cost_usd": 0.001}))
    return iid


def test_an_interview_fragment_is_its_keys_only_and_pages_send_the_policy(api: Api) -> None:
    iid = store_interview(api.runtime, owner=owner_of(api.key), idea=f"lab gear {MARKUP}",
                          answers=(MARKUP,), null_last=True)
    other = {"Authorization": f"Bearer {api.other_key}"}

    mine = api.client.get(f"/fragments/interviews/{iid}", headers=api.auth)
    theirs = api.client.get(f"/fragments/interviews/{iid}", headers=other)
    shell = api.client.get(f"/interviews/{iid}")

    assert api.client.get(f"/fragments/interviews/{iid}").status_code == 401
    assert theirs.status_code == 404 and theirs.headers["content-type"] == "application/problem+json"
    assert "lab gear" not in theirs.text
    assert api.client.get(f"/fragments/interviews/{uuid.uuid4()}", headers=api.auth).status_code == 404
    assert api.client.get("/interviews/not-an-interview").status_code == 404
    for r in (mine, shell, api.client.get("/")):
        assert r.status_code == 200, r.text
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"
        for tag, attrs in Tags(r.text).tags:
            assert tag != "style" and "style" not in attrs, (tag, attrs)
            assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
            assert tag not in ("img", "b", "i"), (tag, attrs)
            if tag == "script":
                assert attrs.get("src") == "/static/app.js"
    # With keys, the page is a shell: the script fetches the interview with the key.
    assert "lab gear" not in shell.text and 'data-page="interview"' in shell.text
    html = mine.text
    assert str(escape(MARKUP)) in html and "lab gear " + str(escape(MARKUP)) in html
    assert "Labs resell idle gear &lt;b&gt;often&lt;/b&gt;" in html
    assert "No evaluation this turn" in html and "every provider failed" in html
    assert 'id="build-button"' in html and 'id="answer"' in html
    assert 'Start with an interview' in api.client.get("/").text


def test_a_finished_interview_is_rendered_whole_when_the_server_can_read_it(open_api: Api) -> None:
    iid = store_interview(open_api.runtime, owner=ANONYMOUS, answers=("Small labs", "Price"),
                          done=True)

    r = open_api.client.get(f"/interviews/{iid}")

    assert r.status_code == 200
    tags = Tags(r.text)
    assert tags.by_id("interview")["data-status"] == "done"
    assert "disabled" in tags.by_id("answer")  # a finished interview takes no answer
    assert "primary" in (tags.by_id("build-button")["class"] or "")
    assert [a.get("id") for t, a in tags.tags if t == "li" and a.get("id", "")
            and str(a["id"]).startswith("turn-")] == ["turn-1", "turn-2", "turn-3"]
    for n in (1, 2, 3):
        assert f"Question {n}?" in r.text
    assert "Small labs" in r.text and 'class="choice"' not in r.text
    for name in SCORES:
        assert f'id="score-{name}"' in r.text
    assert "+1" in r.text and "as of turn 3" in r.text
    assert open_api.client.get(f"/interviews/{uuid.uuid4()}").status_code == 404


# -- in the browser --------------------------------------------------------------------------
class Interviewer:
    """The fake providers' answers, with a real interviewer's questions: the next of a fixed
    list, streamed in small chunks, slowly enough to watch (the structured part, the
    specialists' answers: the fake's own, at full speed)."""

    def __init__(self, fake: Any, delay_s: float = 0.12) -> None:
        self.fake, self.delay_s = fake, delay_s
        self.lock = threading.Lock()

    def __call__(self, prompt: FakePrompt) -> str | dict[str, Any]:
        if prompt.wants_json:
            with self.lock:
                self.fake.chunk_delay_s, self.fake.chunk_chars = 0.0, 400
            return default_responder(prompt)
        asked = sum(role == "assistant" for role, _ in prompt.messages)
        with self.lock:
            self.fake.chunk_delay_s, self.fake.chunk_chars = self.delay_s, 4
        return QUESTIONS[asked % len(QUESTIONS)]


@pytest.fixture
def interviewer(fresh: Web) -> Iterator[Web]:
    fake = fresh.fakes["anthropic"]
    fake.responder = Interviewer(fake)
    chars = fake.chunk_chars
    try:
        yield fresh
    finally:
        fake.responder = default_responder
        fake.chunk_delay_s, fake.chunk_chars = 0.0, chars


# Records, in the page, each text the streaming bubble of the newest turn showed.
WATCH_BUBBLES = """
window.__texts = {};
new MutationObserver(() => {
  for (const li of document.querySelectorAll("#chat-log > li.turn")) {
    const t = li.querySelector(".them .text");
    const seen = (window.__texts[li.id] ||= []);
    if (t && seen[seen.length - 1] !== t.textContent) seen.push(t.textContent);
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def _turn_done(page: Any, n: int) -> None:
    page.wait_for_selector(f"#turn-{n}[data-status=done]", timeout=30_000)
    page.wait_for_selector("#answer-form button[type=submit]:not([disabled])", timeout=10_000)


@pytest.mark.slow
def test_an_interview_from_the_form_streams_scores_and_builds_the_masterplan(
        interviewer: Web, tab: Tab) -> None:
    web = interviewer
    page = tab.page
    page.context.add_init_script(WATCH_BUBBLES)
    page.goto(web.base + "/")
    tab.enter_key()
    page.fill("#idea", "a marketplace for used lab equipment")
    page.click("button:has-text('Start with an interview')")
    page.wait_for_url(f"{web.base}/interviews/*")
    iid = page.url.rsplit("/", 1)[1]

    # The first question streams in, then the scores and the quick replies appear.
    _turn_done(page, 1)
    first = page.inner_text("#turn-1 .them .text")
    assert first == QUESTIONS[0]
    texts = page.evaluate("window.__texts")["turn-1"]
    partial = [t for t in texts if t and t != first]
    assert len(partial) >= 3 and all(first.startswith(t) for t in partial), texts
    assert page.locator("#scores li.score").count() == 6
    assert page.locator("#assumptions li.assumption").count() >= 1
    choices = page.locator("#choices button.choice")
    assert choices.count() >= 2
    assert page.locator("#scores .moved.up").count() == 0  # nothing moved yet

    # A quick reply is the answer: its bubble shows the choice, and the next question comes.
    page.evaluate("document.querySelector('#score-problem .fill').__seen = 'turn 1'")
    assert page.get_attribute("#score-problem .fill", "class") == "fill w-3"
    choice = choices.first.inner_text()
    choices.first.click()
    page.wait_for_selector("#turn-2")
    assert page.inner_text("#turn-2 .you .text") == choice
    _turn_done(page, 2)
    assert page.inner_text("#turn-2 .them .text") == QUESTIONS[1]
    assert len(page.evaluate("window.__texts")["turn-2"]) >= 3
    # The answer moved the scores: each one's delta is shown.
    assert page.inner_text("#score-problem .moved") == "+1"
    assert page.locator("#scores .moved.up").count() == 6
    # The same bar, a step longer (its width's transition shows the move).
    assert page.evaluate("document.querySelector('#score-problem .fill').__seen") == "turn 1"
    assert page.get_attribute("#score-problem .fill", "class") == "fill w-4"

    # A free answer, typed: Shift+Enter is a new line, Enter sends.
    page.focus("#answer")
    page.keyboard.type("Speed, mostly")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("and trust")
    page.keyboard.press("Enter")
    page.wait_for_selector("#turn-3")
    assert page.inner_text("#turn-3 .you .text") == "Speed, mostly\nand trust"
    _turn_done(page, 3)
    assert page.evaluate("document.activeElement.id") == "answer"
    assert page.input_value("#answer") == ""

    # Markup in an answer is text.
    page.fill("#answer", MARKUP)
    page.click("#answer-form button[type=submit]")
    page.wait_for_selector("#turn-4")
    assert page.inner_text("#turn-4 .you .text") == MARKUP
    _turn_done(page, 4)
    assert page.locator("#interview img, #interview script").count() == 0
    assert page.evaluate("window.__xss") is None

    # The chat mid-way: quick replies, moved scores, tracked assumptions.
    ARTIFACTS.mkdir(exist_ok=True)
    page.mouse.move(0, 0)
    page.wait_for_timeout(1000)  # the bars' transition has ended
    shot = ARTIFACTS / "interview.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 30_000
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        DOCS_SHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS_SHOT)

    # The fourth answer: the interviewer has enough. No more answers; the button stands out.
    last = page.locator("#choices button.choice").last.inner_text()
    page.focus("#answer")
    page.keyboard.press("Shift+Tab")  # the keyboard reaches the quick replies
    assert page.evaluate("document.activeElement.textContent") == last
    page.keyboard.press("Enter")
    page.wait_for_selector("#interview[data-status=done]", timeout=30_000)
    assert page.is_disabled("#answer")
    assert page.locator("#choices").count() == 0
    assert page.locator("#build.ready #build-button.primary").is_enabled()
    assert page.inner_text("#turn-5 .them .text") == QUESTIONS[4]
    body = httpx.get(f"{web.base}/v1/interviews/{iid}", headers=AUTH, timeout=10).json()
    assert body["status"] == "done" and [t["status"] for t in body["turns"]] == ["done"] * 5
    assert [t["answer"] for t in body["turns"]][1:] == [
        choice, "Speed, mostly\nand trust", MARKUP, last]

    page.screenshot(path=str(ARTIFACTS / "interview-done.png"), full_page=True)

    # Build the masterplan: the job page opens and reaches done.
    page.click("#build-button")
    page.wait_for_url(f"{web.base}/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#job[data-status=succeeded]", timeout=60_000)
    job = web.wait(job_id)
    assert job["context"]["interview"]["id"] == iid
    assert httpx.get(f"{web.base}/v1/interviews/{iid}", headers=AUTH,
                     timeout=10).json()["job_id"] == job_id

    # The key went as a header on every API call, never in a URL.
    assert not [r.url for r in tab.requests if KEY in r.url]
    api_calls = [r for r in tab.requests if "/v1/" in r.url or "/fragments/" in r.url]
    assert api_calls and all(r.headers.get("authorization") == f"Bearer {KEY}" for r in api_calls)
    posted = [r for r in api_calls if r.method == "POST"]
    assert [r.url.removeprefix(web.base) for r in posted] == [
        "/v1/interviews", *[f"/v1/interviews/{iid}/turns"] * 4, f"/v1/interviews/{iid}/masterplan"]
    assert not tab.errors, tab.errors


@pytest.mark.slow
def test_a_dropped_turn_stream_resumes_with_the_last_event_id(interviewer: Web, tab: Tab) -> None:
    web = interviewer
    r = httpx.post(f"{web.base}/v1/interviews", json={"idea": "bike repair subscriptions"},
                   headers=AUTH, timeout=10)
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    page = tab.page
    streams: list[dict[str, str]] = []

    def events(route: Any) -> None:
        streams.append(route.request.headers)
        if len(streams) == 1:  # one token, then the connection ends as if dropped
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"},
                          body='id: 1-0\nevent: token\ndata: {"text": "Who "}\n\n')
        else:
            route.continue_()

    page.route(f"**/v1/interviews/{iid}/turns/1/events", events)
    page.goto(f"{web.base}/interviews/{iid}")
    tab.enter_key()
    page.wait_for_selector("#turn-1[data-status=done]", timeout=30_000)

    assert len(streams) == 2, streams
    assert "last-event-id" not in streams[0]
    assert streams[1]["last-event-id"] == "1-0"
    assert page.inner_text("#turn-1 .them .text") == QUESTIONS[0]
    assert not tab.errors, tab.errors


@pytest.mark.slow
def test_a_wait_and_a_missing_evaluation_are_told_and_the_conversation_goes_on(
        interviewer: Web, tab: Tab) -> None:
    web = interviewer
    r = httpx.post(f"{web.base}/v1/interviews", json={"idea": "a seed library"}, headers=AUTH,
                   timeout=10)
    iid = r.json()["id"]
    page = tab.page
    # The first turn's stream, as a worker waiting for providers would write it.
    page.route(f"**/v1/interviews/{iid}/turns/1/events", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"},
        body='id: 1-0\nevent: wait\ndata: {"wait_ms": 4000, "reason": "anthropic: rate limited"}\n\n'))
    page.goto(f"{web.base}/interviews/{iid}")
    tab.enter_key()
    note = page.wait_for_selector("#turn-1 .note.waiting")
    assert note.inner_text() == "Waiting for a provider (about 4 s): anthropic: rate limited."
    page.unroute(f"**/v1/interviews/{iid}/turns/1/events")
    _turn_done(page, 1)
    assert page.locator("#turn-1 .note.waiting").count() == 0

    # Every provider fails the structured part: the turn says so, and the next answer goes on.
    def no_json(prompt: FakePrompt) -> str | dict[str, Any]:
        if prompt.wants_json:
            raise RuntimeError("no structured output today")
        return default_responder(prompt)

    for fake in web.fakes.values():
        fake.responder = no_json
    try:
        page.fill("#answer", "Gardeners in flats")
        page.press("#answer", "Enter")
        page.wait_for_selector("#turn-2 .note.unscored", timeout=60_000)
        _turn_done(page, 2)
    finally:
        for fake in web.fakes.values():
            fake.responder = default_responder
    assert "No evaluation this turn" in page.inner_text("#turn-2 .note.unscored")
    assert page.locator("#scores .moved.up").count() == 0  # the scores are still turn 1's
    assert page.locator("#choices").count() == 0 and page.is_enabled("#answer")
    page.fill("#answer", "Seed swaps")
    page.press("#answer", "Enter")
    _turn_done(page, 3)
    assert page.locator("#turn-3 .note").count() == 0
    assert not tab.errors, tab.errors


@pytest.mark.slow
def test_an_interview_at_phone_width_reads_in_one_column(interviewer: Web, browser: Any) -> None:
    r = httpx.post(f"{interviewer.open_base}/v1/interviews", json={"idea": "a tool library"},
                   timeout=10)
    iid = r.json()["id"]
    deadline = time.monotonic() + 30
    while httpx.get(f"{interviewer.open_base}/v1/interviews/{iid}",
                    timeout=10).json()["turns"][0]["status"] == "streaming":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    phone = browser.new_context(java_script_enabled=False, viewport={"width": 390, "height": 844})
    page = phone.new_page()
    page.goto(f"{interviewer.open_base}/interviews/{iid}")
    assert page.inner_text("#turn-1 .them .text") == QUESTIONS[0]
    assert page.locator("#scores li.score").count() == 6
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    chat, side = page.locator("section.chat").bounding_box(), page.locator("aside").bounding_box()
    assert side["y"] > chat["y"] and abs(side["x"] - chat["x"]) < 2
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "interview-phone-no-js.png"), full_page=True)
    phone.close()
