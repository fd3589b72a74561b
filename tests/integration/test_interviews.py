"""The interview through the HTTP API and a real worker, on Redis and PostgreSQL, with providers
served by the local fake through the real SDKs: turns streamed as Server-Sent Events (tokens,
then the structured part, then end), resumed with Last-Event-ID, fallback before the first token
only, the structured part made by a second call (and `null` with its reason when every provider
fails it), the bad requests refused with nothing stored, and the masterplan built from it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from testkit.fake_provider import FakeProvider
from tests.integration.conftest import AUTH_A, AUTH_B, Stack, fake_env


def events(lines: Iterator[str]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(id, event, data) from an SSE body, comments skipped."""
    eid = name = ""
    data: list[str] = []
    for line in lines:
        if line.startswith(":"):
            continue
        if not line:
            if name:
                yield eid, name, json.loads("\n".join(data))
            eid = name = ""
            data = []
        elif line.startswith("id: "):
            eid = line[4:]
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])


def read_turn(stack: Stack, method: str, url: str, headers: dict[str, str] = AUTH_A,
              **kw: Any) -> list[tuple[str, str, dict[str, Any]]]:
    with stack.client.stream(method, url, headers=headers, timeout=60, **kw) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        got = []
        for e in events(r.iter_lines()):
            got.append(e)
            if e[1] == "end":
                break
        return got


def start(stack: Stack, idea: str = "a marketplace for used lab equipment") -> dict[str, Any]:
    r = stack.client.post("/v1/interviews", json={"idea": idea}, headers=AUTH_A)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    assert r.headers["Location"] == f"/v1/interviews/{body['id']}"
    return body


def text_of(got: list[tuple[str, str, dict[str, Any]]]) -> str:
    return "".join(d["text"] for _, name, d in got if name == "token")


def wait_turn(stack: Stack, iid: str, n: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = stack.client.get(f"/v1/interviews/{iid}", headers=AUTH_A).json()
        turn = next((t for t in body["turns"] if t["n"] == n), None)
        if turn is not None and turn["status"] != "streaming":
            return body  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"turn {n} of {iid} still streaming")


def ONE(fake: FakeProvider) -> dict[str, str]:
    return {"LLM_PROVIDERS": "openai", **fake_env("openai", fake)}


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(api_key="sk-test", chunk_chars=6) as f:
        yield f


def test_a_conversation_streams_each_turn_then_its_structured_part(make_stack, fake) -> None:
    stack = make_stack(ONE(fake))
    iv = start(stack)
    first = iv["turns"][0]
    assert first["n"] == 1 and first["answer"] is None
    got = read_turn(stack, "GET", first["events"])
    names = [n for _, n, _ in got]
    # Tokens first, then exactly one structured part, then the end: never mixed.
    assert names[0] == "token" and names[-2:] == ["turn", "end"], names
    assert set(names[:-2]) == {"token"} and names.count("token") > 1
    turn = got[-2][2]
    question = text_of(got)
    assert turn["question"] == question and "{" not in question  # the text is prose
    s = turn["structured"]
    assert set(s) == {"eval", "assumptions", "choices", "done"}
    assert set(s["eval"]) == {"problem", "customer", "market", "differentiation",
                              "feasibility", "business_model"}
    assert all(v["moved"] == 0 and 0 <= v["score"] <= 10 for v in s["eval"].values())
    assert 2 <= len(s["choices"]) <= 4
    # The fake answered two calls: a streamed one without a schema, then one with it.
    calls = fake.calls
    assert [c.streamed for c in calls] == [True, True]
    assert [("response_format" in c.body) for c in calls] == [False, True]

    answered = read_turn(stack, "POST", f"/v1/interviews/{iv['id']}/turns",
                         json={"answer": s["choices"][0]})
    assert answered[-2][1] == "turn" and answered[-2][2]["n"] == 2
    body = stack.client.get(f"/v1/interviews/{iv['id']}", headers=AUTH_A).json()
    assert [t["n"] for t in body["turns"]] == [1, 2]
    assert body["turns"][1]["answer"] == s["choices"][0]
    assert body["turns"][0]["question"] == question
    assert all(t["usage"]["calls"] == 2 and t["usage"]["input_tokens"] > 0 for t in body["turns"])
    assert body["usage"]["calls"] == 4
    assert body["evaluation"] is not None and body["assumptions"]
    # The ledger: a row per attempt, stage `interview`, with the interview's id.
    from masterplan.db.models import LLMCall

    with stack.runtime.sessions() as sess:
        rows = sess.query(LLMCall).filter(LLMCall.interview_id == iv["id"]).all()
    assert len(rows) == 4 and {r.stage for r in rows} == {"interview"}
    assert all(r.job_id is None and r.started_at is not None for r in rows)
    assert sum(r.input_tokens for r in rows) == body["usage"]["input_tokens"]


def test_a_reader_that_reconnects_resumes_after_its_last_event(make_stack, fake) -> None:
    stack = make_stack(ONE(fake))
    iv = start(stack)
    whole = read_turn(stack, "GET", iv["turns"][0]["events"])
    cut = 2
    rest = read_turn(stack, "GET", iv["turns"][0]["events"],
                     headers={**AUTH_A, "Last-Event-ID": whole[cut - 1][0]})
    assert [e[0] for e in rest] == [e[0] for e in whole[cut:]]
    assert text_of(whole[:cut]) + text_of(rest) == text_of(whole)


def test_a_turn_told_from_the_database_once_its_events_expired(make_stack, fake) -> None:
    stack = make_stack(ONE(fake))
    iv = start(stack)
    whole = read_turn(stack, "GET", iv["turns"][0]["events"])
    from masterplan import turnstream as ts

    stack.runtime.redis.delete(ts.key(stack.settings.redis_key_prefix, iv["id"], 1))
    again = read_turn(stack, "GET", iv["turns"][0]["events"])
    assert [n for _, n, _ in again] == ["token", "turn", "end"]
    assert text_of(again) == text_of(whole)
    assert again[1][2]["structured"] == whole[-2][2]["structured"]
    assert again[1][2]["finished"] == whole[-2][2]["finished"]
    # A reader that had seen part of the expired stream gets the rest without the text (the
    # `turn` event holds it whole), and always its end.
    rest = read_turn(stack, "GET", iv["turns"][0]["events"],
                     headers={**AUTH_A, "Last-Event-ID": whole[1][0]})
    assert [n for _, n, _ in rest] == ["turn", "end"]
    assert rest[0][2]["question"] == text_of(whole)


def test_fallback_before_the_first_token_is_invisible(make_stack) -> None:
    with FakeProvider(api_key="sk-a", chunk_chars=6) as bad, \
            FakeProvider(api_key="sk-b", chunk_chars=6) as good:
        bad.set_mode("down")
        stack = make_stack({**fake_env("openai", bad),
                            **fake_env("groq", good, structured_output="json_schema"),
                            "LLM_PROVIDERS": "openai,groq"})
        iv = start(stack)
        got = read_turn(stack, "GET", iv["turns"][0]["events"])
        assert [n for _, n, _ in got if n != "token"] == ["turn", "end"]
        body = wait_turn(stack, iv["id"], 1)
        assert body["turns"][0]["provider"] == "groq"
        assert text_of(got) == body["turns"][0]["question"]


def test_a_stream_cut_after_text_ends_with_an_error_not_another_providers_text(make_stack
                                                                                ) -> None:
    with FakeProvider(api_key="sk-a", chunk_chars=6) as first, \
            FakeProvider(api_key="sk-b", chunk_chars=6) as second:
        first.fail_stream_after(2)
        stack = make_stack({**fake_env("openai", first),
                            **fake_env("groq", second, structured_output="json_schema"),
                            "LLM_PROVIDERS": "openai,groq"})
        iv = start(stack)
        got = read_turn(stack, "GET", iv["turns"][0]["events"])
        names = [n for _, n, _ in got]
        assert names[-2:] == ["error", "end"] and "turn" not in names
        err = got[-2][2]
        assert err["partial"] == text_of(got) and err["partial"]
        assert second.count() == 0  # nothing spliced from the next provider
        body = wait_turn(stack, iv["id"], 1)
        assert body["turns"][0]["status"] == "failed" and body["turns"][0]["error"]
        # The conversation goes on: an answer is taken and the next turn runs.
        nxt = read_turn(stack, "POST", f"/v1/interviews/{iv['id']}/turns",
                        json={"answer": "Small labs"})
        assert nxt[-2][1] == "turn"


def test_a_structured_part_failed_everywhere_is_null_with_its_reason(make_stack) -> None:
    with FakeProvider(api_key="sk-a", chunk_chars=6, ignore_instructions=True) as sloppy:
        stack = make_stack(ONE(sloppy))
        iv = start(stack)
        got = read_turn(stack, "GET", iv["turns"][0]["events"])
        turn = got[-2]
        assert turn[1] == "turn" and turn[2]["structured"] is None
        assert "structured part failed" in turn[2]["error"] and "openai" in turn[2]["error"]
        assert text_of(got)  # the question itself came through
        # The repair was tried once: 1 streamed question + 2 structured attempts.
        assert sloppy.count() == 3
        nxt = read_turn(stack, "POST", f"/v1/interviews/{iv['id']}/turns",
                        json={"answer": "University labs"})
        assert nxt[-2][1] == "turn"


def test_an_instruction_ignoring_first_provider_falls_back_for_the_structured_part(make_stack
                                                                                     ) -> None:
    with FakeProvider(api_key="sk-a", chunk_chars=6, ignore_instructions=True) as sloppy, \
            FakeProvider(api_key="sk-b", chunk_chars=6) as good:
        stack = make_stack({**fake_env("openai", sloppy),
                            **fake_env("groq", good, structured_output="json_schema"),
                            "LLM_PROVIDERS": "openai,groq"})
        iv = start(stack)
        got = read_turn(stack, "GET", iv["turns"][0]["events"])
        assert got[-2][2]["structured"] is not None
        assert good.count() == 1 and sloppy.count() == 3


def test_bad_requests_are_refused_and_store_nothing(make_stack, fake) -> None:
    stack = make_stack(ONE(fake))
    c = stack.client
    assert c.post("/v1/interviews", json={"idea": "  "}, headers=AUTH_A).status_code == 422
    iv = start(stack)
    url = f"/v1/interviews/{iv['id']}/turns"
    # While turn 1 streams (or just after), an empty answer is a 422, another key's a 404.
    r = c.post(url, json={"answer": " \n "}, headers=AUTH_A)
    assert r.status_code == 422 and "answer" in r.text
    assert c.post(url, json={"answer": "x"}, headers=AUTH_B).status_code == 404
    assert c.get(f"/v1/interviews/{iv['id']}", headers=AUTH_B).status_code == 404
    read_turn(stack, "GET", iv["turns"][0]["events"])
    # A turn still streaming: 409. Slow the fake so that turn 2 is still running.
    fake.latency_s = 1.5
    with c.stream("POST", url, json={"answer": "labs"}, headers=AUTH_A, timeout=30) as r2:
        assert r2.status_code == 200
        again = c.post(url, json={"answer": "again"}, headers=AUTH_A)
        assert again.status_code == 409 and "still streaming" in again.json()["detail"]
        for _ in r2.iter_lines():
            pass
    fake.latency_s = 0.0
    body = c.get(f"/v1/interviews/{iv['id']}", headers=AUTH_A).json()
    assert [t["answer"] for t in body["turns"]] == [None, "labs"]


def test_a_finished_interview_takes_no_answer_and_builds_one_masterplan(make_stack) -> None:
    # The stub interviewer says it has enough after four answers.
    stack = make_stack({"INTERVIEW_MAX_TURNS": "3"})
    iv = start(stack, "bike repair subscriptions")
    read_turn(stack, "GET", iv["turns"][0]["events"])
    url = f"/v1/interviews/{iv['id']}/turns"
    for answer in ("commuters", "monthly"):
        got = read_turn(stack, "POST", url, json={"answer": answer})
    assert got[-2][2]["finished"] is True
    r = stack.client.post(url, json={"answer": "more"}, headers=AUTH_A)
    assert r.status_code == 409 and "finished" in r.json()["detail"]
    built = stack.client.post(f"/v1/interviews/{iv['id']}/masterplan", headers=AUTH_A)
    assert built.status_code == 202, built.text
    job = built.json()
    ctx = job["context"]["interview"]
    assert ctx["id"] == iv["id"] and [t["answer"] for t in ctx["transcript"]] == \
        [None, "commuters", "monthly"]
    again = stack.client.post(f"/v1/interviews/{iv['id']}/masterplan", headers=AUTH_A)
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    done = stack.wait(job["id"])
    assert done["status"] == "succeeded", done
    body = stack.client.get(f"/v1/interviews/{iv['id']}", headers=AUTH_A).json()
    assert body["job_id"] == job["id"] and body["status"] == "done"


def test_personas_prompts_carry_the_transcript_and_assumptions() -> None:
    from masterplan.personas import persona_request

    ctx = {"interview": {"id": "x", "transcript": [
        {"question": "Who has the problem?", "answer": None},
        {"question": "Who pays?", "answer": "University labs"}],
        "assumptions": [{"statement": "Labs buy used gear", "status": "confirmed"}]},
        "budget": "50k"}
    system = persona_request("market", "lab gear", ctx).system
    assert "Interviewer: Who has the problem?" in system
    assert "Founder: University labs" in system
    assert "- [confirmed] Labs buy used gear" in system
    assert '"budget": "50k"' in system and '"transcript"' not in system


@pytest.mark.parametrize("fault", ["silent", "stall", "no_end"])
def test_timeouts_and_broken_streams(make_stack, fault: str) -> None:
    """Silent before its first token: replaced by the next provider, the reader sees only a
    later first token. Stalled between chunks, or ended without its end marker, after text was
    sent: the turn ends with an `error` carrying what arrived, never the next provider's text."""
    with FakeProvider(api_key="sk-a", chunk_chars=6) as first, \
            FakeProvider(api_key="sk-b", chunk_chars=6) as second:
        if fault == "silent":
            first.stall_stream_after(0)
        elif fault == "stall":
            first.stall_stream_after(2)
        else:
            first.cut_stream_end("end")
        stack = make_stack({**fake_env("openai", first), **fake_env("groq", second),
                            "LLM_PROVIDERS": "openai,groq", "LLM_FIRST_TOKEN_TIMEOUT_S": "1",
                            "LLM_STALL_TIMEOUT_S": "1"})
        iv = start(stack)
        got = read_turn(stack, "GET", iv["turns"][0]["events"])
        names = [n for _, n, _ in got]
        body = wait_turn(stack, iv["id"], 1)
        if fault == "silent":
            assert names[-2:] == ["turn", "end"] and "error" not in names
            assert body["turns"][0]["provider"] == "groq"
            assert body["turns"][0]["first_token_ms"] >= 1000
            return
        assert names[-2:] == ["error", "end"] and "turn" not in names, names
        assert got[-2][2]["partial"] == text_of(got) and text_of(got)
        assert second.count() == 0
        assert body["turns"][0]["status"] == "failed"


def test_a_turn_whose_worker_is_gone_ends_as_lost(make_stack) -> None:
    """A turn still running past INTERVIEW_TURN_TIMEOUT_S ends its stream with an `error`, is
    failed, and the founder can answer again; the worker's late result does not undo that."""
    with FakeProvider(api_key="sk-a", chunk_chars=6, latency_s=4) as slow:
        stack = make_stack({**ONE(slow), "INTERVIEW_TURN_TIMEOUT_S": "1.5",
                            "STREAM_HEARTBEAT_S": "0.5", "LLM_FIRST_TOKEN_TIMEOUT_S": "10"})
        iv = start(stack)
        got = read_turn(stack, "GET", iv["turns"][0]["events"])
        assert [n for _, n, _ in got] == ["error", "end"] and "lost" in got[0][2]["error"]
        # The worker's late result: both calls end on the ledger; the turn stays failed.
        from masterplan.db.models import LLMCall

        deadline = time.monotonic() + 30
        while True:
            with stack.runtime.sessions() as sess:
                rows = sess.query(LLMCall).filter(LLMCall.interview_id == iv["id"]).count()
            if rows >= 2:
                break
            assert time.monotonic() < deadline, "the worker's calls never reached the ledger"
            time.sleep(0.1)
        body = stack.client.get(f"/v1/interviews/{iv['id']}", headers=AUTH_A).json()
        assert body["turns"][0]["status"] == "failed"
        slow.latency_s = 0
        r = stack.client.post(f"/v1/interviews/{iv['id']}/turns", json={"answer": "labs"},
                              headers=AUTH_A)
        assert r.status_code == 200


def test_interview_turns_get_their_share_of_the_buckets(make_stack, fake) -> None:
    from masterplan import admission

    stack = make_stack({**ONE(fake), "INTERACTIVE_SHARE": "0.3", "FAIR_HEADROOM": "0.2"})
    admission._competition = (-admission.CONTENDED_TTL_S, False, False)
    with stack.runtime.sessions.begin() as s:  # no interview active in the window
        from masterplan.db.models import Interview

        s.query(Interview).update({"updated_at": Interview.created_at - timedelta(days=1)})
    assert admission.headroom(stack.runtime, "first") == 0.0
    start(stack)
    admission._competition = (-admission.CONTENDED_TTL_S, False, False)
    assert admission.headroom(stack.runtime, "first") == pytest.approx(0.3)
    # The job's further lanes leave both shares.
    assert admission.headroom(stack.runtime, "more") in (pytest.approx(0.3),
                                                         pytest.approx(0.5))
