"""The interview: how soon a founder reads the interviewer's first token, idle and behind a
backlog of masterplan jobs; how often a turn's structured part survives a bad provider; how many
open turn streams one API process holds while its other endpoints keep their latency.

Four measurements, every process started here and stopped by its process group:

1. Time to first token, idle. One API process (uvicorn), one worker consuming only the
   `interactive` queue, LLM_PROVIDERS=groq pointed at a fake provider process (0.2 s before a
   reply begins, 8-character chunks 5 ms apart). A turn's TTFT is from just before the client
   sends `POST /v1/interviews/{id}/turns` to the moment an httpx client has read the first
   complete `token` event of its response. The baseline is the same fake called directly with
   the `openai` SDK (`chat.completions.create(stream=True)`, the model, messages, max_tokens and
   temperature the turn's question call sends) to its first content delta; the two alternate.
   The fake's structured answer says `done: false` (the interview keeps going; the stub's own
   answer says `done` from the fifth turn on), and an interview takes TURNS_PER_INTERVIEW turns,
   then a new one starts. Its first turn (`POST /v1/interviews`, then `GET` of its `events` URL,
   timed from the POST) is reported apart.
2. First-turn TTFT behind a backlog: a fake provider with a 6,000 TPM bucket (the same
   latency and chunks), the API, a worker for `interactive` and a batch worker
   (`personas,pipeline`, threads -c 32). One interview is started (its first turn read, so an
   interview is active), another key POSTs the backlog (KEY_SUBMISSIONS_PER_MIN off, POSTERS
   clients at once), and once the bucket is below what a job's persona call needs above the
   kept share, a new interview is started every `every_s` seconds for `window_s`, each read in
   a thread of its own (TTFT from its POST, as the idle first turns). New interviews, not
   answers: without the share a turn's structured part waits behind the jobs for tens of seconds,
   and an interview takes no answer while its turn streams. The window ends once the last turn
   has its first token; turns still streaming then are cut. Run twice, each on a fresh stack and
   database: INTERACTIVE_SHARE at its default, and 0. While the turns run, the bucket
   (GET /v1/providers) and the jobs (in PostgreSQL) are sampled each 0.5 s; the fake's
   /_fake/stats gives the tokens it charged over the window. Ratio = loaded / idle first-turn
   percentile.
3. Structured-turn success: LLM_PROVIDERS=openai,groq, openai pointed at a faulty fake
   (a: a seeded 30% of replies cut in the middle; b: every schema answered with JSON that fits
   none), groq at a healthy one. Each turn is a new interview's first turn (so the ledger rows of
   an interview are that turn's): the share of `turn` events whose `structured` is not null,
   and from `llm_calls` (stage `interview`) how many structured parts needed the repair (an
   `invalid_output` row, then openai's answer) or the fallback (groq's answer).
4. Open turn streams: interviews whose first turn is `streaming` and whose task was never
   published (written to the database directly), so their streams stay open and quiet; a helper
   process (`python -m bench.interview hold ...`, asyncio + httpx) opens one
   `GET .../turns/1/events` each, OPEN_AT_ONCE at a time. GET /healthz, GET /v1/jobs and
   GET /v1/interviews/{id}, sequential from one keep-alive client, idle and then with the streams
   open; ratio = loaded / idle percentile.

Parts 1, 3 and 4 share one database and API process (the workers change); part 2 has its own
stacks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import harness as H
from bench.streams import hold
from testkit.procs import BIN, Proc, clean_env, free_port, wait_http

IDEA = "a marketplace for used lab equipment"
FAKE_KEY = "sk-bench-interview-0123456789"
KEY_FLOOD = "bench-backlog-key-0123456789"
AUTH_FLOOD = {"Authorization": f"Bearer {KEY_FLOOD}"}
LATENCY_S = 0.2  # the fake's wait before a reply begins
CHUNK_CHARS = 8
CHUNK_DELAY_S = 0.005  # between streamed chunks: ~400 tokens/s
TURNS_PER_INTERVIEW = 4  # the first, then three answered
HIGH_LIMITS = {"TPM": "10000000", "RPM": "100000", "TPD": "0", "RPD": "0"}
BATCH_CONCURRENCY = 32
INTERACTIVE_CONCURRENCY = 8
SAMPLE_S = 0.5
POSTERS = 4  # clients POSTing the backlog at once
# Streams opened at once by the holder (a burst of hundreds of connects would measure the
# listen backlog, not the API).
OPEN_AT_ONCE = 50
QUIET_S = 3.0  # the window over which the API's CPU is sampled, streams open, no requests
SETTLE_S = 2.0
READ_TIMEOUT = httpx.Timeout(30.0, read=180.0)


# ------------------------------------------------------------------ processes


@contextmanager
def _fake(*args: str, name: str) -> Iterator[str]:
    """`python -m bench.interview fake ...`: the fake provider with this benchmark's
    responder (see `_keep_going`) and chunk pacing; yields its URL."""
    H.LOG_DIR.mkdir(parents=True, exist_ok=True)
    proc = Proc([str(BIN / "python"), "-m", "bench.interview", "fake", "--api-key", FAKE_KEY,
                 *args], clean_env(), H.LOG_DIR / f"{name}.log")
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None:
            for line in proc.output().splitlines():
                if line.startswith("READY "):
                    url = line.split()[1]
            if url is None:
                if proc.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake provider {name} did not start: "
                                       f"{proc.output()[-2000:]}")
                time.sleep(0.05)
        yield url
    finally:
        proc.stop()


def _fake_args(*, tpm: int | None = None, rpm: int | None = None, latency_s: float = LATENCY_S,
               chunk_delay_s: float = CHUNK_DELAY_S, flavor: str = "groq",
               extra: tuple[str, ...] = ()) -> list[str]:
    args = ["--flavor", flavor, "--latency-s", str(latency_s), "--chunk-chars", str(CHUNK_CHARS),
            "--chunk-delay-s", str(chunk_delay_s), *extra]
    if tpm:
        args += ["--tpm", str(tpm)]
    if rpm:
        args += ["--rpm", str(rpm)]
    return args


def _provider_env(name: str, url: str, limits: dict[str, str] | None = None) -> dict[str, str]:
    n = name.upper()
    return {f"{n}_BASE_URL": f"{url}/v1", f"{n}_API_KEY": FAKE_KEY,
            **{f"{n}_{k}": v for k, v in (limits or HIGH_LIMITS).items()}}


def _env(db_url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": db_url, "REDIS_URL": H.redis_url(H.OURS_DB),
            "REDIS_KEY_PREFIX": prefix, "API_KEYS": f"{H.API_KEY},{KEY_FLOOD}",
            "LOG_LEVEL": "WARNING", "KEY_SUBMISSIONS_PER_MIN": "0",
            "INTERVIEW_MAX_TURNS": "50", **extra}


def _probe_app(env: dict[str, str]) -> Any:
    """A Celery app with the workers' configuration, only to ping them."""
    from celery import Celery

    from bench.raw_celery import celery_config

    app = Celery("probe")
    app.conf.update(celery_config(H.settings_for(env)))
    return app


@contextmanager
def _api(env: dict[str, str], name: str) -> Iterator[tuple[str, Proc]]:
    """`uvicorn api.main:app` on a free port (as H.api_process), with its process."""
    H.LOG_DIR.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = Proc([str(BIN / "uvicorn"), "api.main:app", "--port", str(port), "--log-level",
                 "warning"], clean_env(**env), H.LOG_DIR / f"{name}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz", timeout=60, proc=proc)
        yield base, proc
    finally:
        proc.stop()


def _start_worker(env: dict[str, str], queues: str, concurrency: int, name: str) -> H.Worker:
    probe = _probe_app(env)
    try:
        return H.start_worker("workers", env, probe=probe, pool="threads",
                              concurrency=concurrency, name=name, queues=queues)
    finally:
        probe.close()


class _Workers:
    """Worker processes started in threads (while the caller starts the API), each
    (queues, concurrency, name); `ready()` waits for them, `stop()` stops those that started."""

    def __init__(self, env: dict[str, str], specs: list[tuple[str, int, str]]) -> None:
        self._pool = ThreadPoolExecutor(max(1, len(specs)))
        self._futures = [self._pool.submit(_start_worker, env, *spec) for spec in specs]

    def ready(self) -> list[H.Worker]:
        return [f.result() for f in self._futures]

    def stop(self) -> None:
        for f in self._futures:
            try:
                worker = f.result()
            except Exception:  # noqa: BLE001 - it never started: nothing to stop
                continue
            worker.stop()
        self._pool.shutdown()


@contextmanager
def _workers(env: dict[str, str], specs: list[tuple[str, int, str]]) -> Iterator[_Workers]:
    started = _Workers(env, specs)
    try:
        yield started
    finally:
        started.stop()


INTERACTIVE = ("interactive", INTERACTIVE_CONCURRENCY)


# ------------------------------------------------------------------ reading a turn


@dataclass
class TurnRead:
    """A turn's events as the client read them."""

    ttft_s: float | None = None  # from the request sent to the first `token` event read
    sent_at: float = 0.0  # wall clock (epoch s) when the request was sent
    first_at: float | None = None  # wall clock when the first `token` event was read
    done_s: float | None = None  # from the request sent to the `turn` (or `error`) event read
    names: list[str] = field(default_factory=list)
    text: str = ""
    turn: dict[str, Any] | None = None  # the `turn` event's data
    error: dict[str, Any] | None = None  # the `error` event's data


def _read_events(r: httpx.Response, t0: float, sent_at: float, out: TurnRead | None = None
                 ) -> TurnRead:
    if r.status_code != 200:
        raise RuntimeError(f"{r.request.method} {r.request.url.path}: {r.status_code} "
                           f"{r.read()[:300]!r}")
    out = out or TurnRead()
    out.sent_at = sent_at
    name, data = "", []
    for line in r.iter_lines():
        if line.startswith(":"):
            continue
        if line:
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            continue
        if not name:
            continue
        payload = json.loads("\n".join(data))
        if name == "token":
            if out.ttft_s is None:
                out.ttft_s = time.perf_counter() - t0
                out.first_at = time.time()
            out.text += payload["text"]
        elif name == "turn":
            out.turn = payload
            out.done_s = time.perf_counter() - t0
        elif name == "error":
            out.error = payload
            out.done_s = time.perf_counter() - t0
        out.names.append(name)
        if name == "end":
            break
        name, data = "", []
    return out


def _start(client: httpx.Client, out: TurnRead | None = None) -> tuple[str, TurnRead]:
    """A new interview and its first turn, timed from the POST (read into `out`)."""
    sent_at, t0 = time.time(), time.perf_counter()
    r = client.post("/v1/interviews", json={"idea": IDEA}, headers=H.AUTH)
    if r.status_code != 201:
        raise RuntimeError(f"POST /v1/interviews: {r.status_code} {r.text[:300]}")
    body = r.json()
    with client.stream("GET", body["turns"][0]["events"], headers=H.AUTH,
                       timeout=READ_TIMEOUT) as s:
        return str(body["id"]), _read_events(s, t0, sent_at, out)


def _answer(client: httpx.Client, interview_id: str, text: str) -> TurnRead:
    sent_at, t0 = time.time(), time.perf_counter()
    with client.stream("POST", f"/v1/interviews/{interview_id}/turns", json={"answer": text},
                       headers=H.AUTH, timeout=READ_TIMEOUT) as s:
        return _read_events(s, t0, sent_at)


def _next_answer(read: TurnRead, n: int) -> str:
    choices = ((read.turn or {}).get("structured") or {}).get("choices") or []
    return str(choices[0]) if choices else f"Small labs, answer {n}"


class Transcript:
    """What the worker sends for the next question, rebuilt on the client's side for the
    direct baseline (masterplan/conversation.py `_ask`)."""

    def __init__(self) -> None:
        from masterplan import interview as iv

        self.iv = iv
        self.turns: list[Any] = []

    def request(self, answer: str | None, max_tokens: int) -> Any:
        return self.iv.question_request(IDEA, [*self.turns, self.iv.Exchange(answer, None)],
                                        max_tokens=max_tokens)

    def add(self, answer: str | None, read: TurnRead) -> None:
        ok = read.turn is not None
        self.turns.append(self.iv.Exchange(answer, read.text if ok else None))


def _direct_ttft(oa: Any, request: Any, model: str) -> float:
    """The fake called directly with the SDK, streamed: seconds to the first content delta."""
    messages = [{"role": "system", "content": request.system},
                *({"role": m.role, "content": m.content} for m in request.messages)]
    t0 = time.perf_counter()
    stream = oa.chat.completions.create(model=model, messages=messages,
                                        max_tokens=request.max_tokens,
                                        temperature=request.temperature, stream=True,
                                        stream_options={"include_usage": True})
    first: float | None = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
    if first is None:
        raise RuntimeError("the direct call streamed no content")
    return first


def _ms(values: list[float]) -> list[float]:
    return [round(v * 1000, 3) for v in values]


def _pcts(values_ms: list[float], prefix: str) -> dict[str, float]:
    return {f"{prefix}_p50_ms": H.percentile(values_ms, 50),
            f"{prefix}_p95_ms": H.percentile(values_ms, 95)}


# ------------------------------------------------------------------ 1. idle TTFT


def _ttft_idle(base: str, env: dict[str, str], url: str, turns: int) -> dict[str, Any]:
    import openai

    settings = H.settings_for(env)
    model = settings.provider("groq").model
    max_tokens = settings.interview_question_max_tokens
    system: list[float] = []
    direct: list[float] = []
    whole: list[float] = []  # to the `turn` event
    first_sys: list[float] = []
    first_direct: list[float] = []
    failed = 0
    marks: list[tuple[str, int, float, float]] = []  # interview, turn, sent, first token read
    oa = openai.OpenAI(base_url=f"{url}/v1", api_key=FAKE_KEY, max_retries=0, timeout=60)
    with httpx.Client(base_url=base, timeout=30) as client:
        _direct_ttft(oa, Transcript().request(None, max_tokens), model)  # warm-up, untimed
        _start(client)
        while len(system) < turns:
            tr = Transcript()
            first_direct.append(_direct_ttft(oa, tr.request(None, max_tokens), model))
            iid, read = _start(client)
            if read.ttft_s is None or read.turn is None:
                failed += 1
                continue
            first_sys.append(read.ttft_s)
            tr.add(None, read)
            for n in range(2, TURNS_PER_INTERVIEW + 1):
                if len(system) >= turns:
                    break
                answer = _next_answer(read, n)
                direct.append(_direct_ttft(oa, tr.request(answer, max_tokens), model))
                read = _answer(client, iid, answer)
                if read.ttft_s is None or read.turn is None:
                    failed += 1
                    direct.pop()
                    break
                if read.turn["finished"]:
                    raise RuntimeError(f"interview {iid} finished at turn {n}")
                system.append(read.ttft_s)
                whole.append(read.done_s or float("nan"))
                marks.append((iid, n, read.sent_at, read.first_at or float("nan")))
                tr.add(answer, read)
    oa.close()
    sys_ms, dir_ms = _ms(system), _ms(direct)
    fs_ms, fd_ms = _ms(first_sys), _ms(first_direct)
    out: dict[str, Any] = {"turns": len(system), "failed_turns": failed,
                           **_pcts(sys_ms, "system"), **_pcts(dir_ms, "direct"),
                           **_pcts(_ms(whole), "turn")}
    out["added_p50_ms"] = out["system_p50_ms"] - out["direct_p50_ms"]
    out["added_p95_ms"] = out["system_p95_ms"] - out["direct_p95_ms"]
    first: dict[str, Any] = {"turns": len(first_sys), **_pcts(fs_ms, "system"),
                             **_pcts(fd_ms, "direct")}
    first["added_p50_ms"] = first["system_p50_ms"] - first["direct_p50_ms"]
    first["added_p95_ms"] = first["system_p95_ms"] - first["direct_p95_ms"]
    out["first_turn"] = first | {"system_ms": fs_ms, "direct_ms": fd_ms}
    return out | {"system_ms": sys_ms, "direct_ms": dir_ms, "marks": marks}


def _epoch(dt: Any) -> float:
    from datetime import UTC

    return float((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp())


def _breakdown(engine: Any, marks: list[tuple[str, int, float, float]], direct_p50_ms: float
               ) -> dict[str, float]:
    """Where an answered turn's time to first token goes (medians, ms), from the client's clock
    and the rows' (one machine, one clock): until the answer's row was made (the API), from
    there until the question call began (commit, publish, broker, worker, the turn loaded, the
    router's checks), and from the call's start to the token read (the provider, then the
    events through Redis and the API) less the direct call's p50."""
    import statistics

    import sqlalchemy as sa

    parts: dict[str, list[float]] = {"api_ms": [], "dispatch_ms": [], "after_call_ms": []}
    with engine.connect() as c:
        for iid, n, sent, first in marks:
            created = c.execute(sa.text("SELECT created_at FROM interview_turns WHERE "
                                        "interview_id = :id AND n = :n"),
                                {"id": iid, "n": n}).scalar_one()
            started = c.execute(sa.text(
                "SELECT min(started_at) FROM llm_calls WHERE interview_id = :id "
                "AND started_at >= :t"), {"id": iid, "t": created}).scalar()
            if started is None:
                continue
            parts["api_ms"].append((_epoch(created) - sent) * 1000)
            parts["dispatch_ms"].append((_epoch(started) - _epoch(created)) * 1000)
            parts["after_call_ms"].append((first - _epoch(started)) * 1000 - direct_p50_ms)
    return {k: round(statistics.median(v), 2) for k, v in parts.items() if v}


# ------------------------------------------------------------------ 2. behind a backlog


class _Monitor:
    """Samples the provider's bucket and the jobs each SAMPLE_S in a thread."""

    def __init__(self, base: str, engine: Any, provider: str) -> None:
        self.base, self.engine, self.provider = base, engine, provider
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def bucket(self, client: httpx.Client) -> dict[str, Any]:
        got = client.get("/v1/providers", headers=H.AUTH).json()["providers"]
        return dict(next(p for p in got if p["name"] == self.provider)["bucket"])

    def _jobs(self) -> dict[str, int]:
        import sqlalchemy as sa

        with self.engine.connect() as c:
            rows = c.execute(sa.text("SELECT status, count(*) FROM jobs GROUP BY status")).all()
        return {str(s): int(n) for s, n in rows}

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    b, jobs = self.bucket(client), self._jobs()
                    self.samples.append({"at": time.monotonic(), "tokens": float(b["tokens"]),
                                         "queued": float(jobs.get("queued", 0)),
                                         "running": float(jobs.get("running", 0)),
                                         "finished": float(jobs.get("succeeded", 0)
                                                           + jobs.get("failed", 0))})
                except (httpx.HTTPError, KeyError, StopIteration):
                    pass
                self._stop.wait(SAMPLE_S)

    def __enter__(self) -> _Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _reservation(request: Any) -> int:
    from masterplan.ratelimit import reservation_tokens

    return reservation_tokens(request.prompt_chars, request.max_tokens)


def _job_line(settings: Any, capacity: int, share: float) -> int:
    """The fewest tokens the bucket must hold for a job's persona call to be admitted: its
    reservation above the share it must leave."""
    from masterplan.personas import persona_request

    req = persona_request("market", IDEA, None, max_tokens=settings.persona_max_tokens)
    return int(capacity * share) + _reservation(req)


def _post_jobs(base: str, n: int) -> None:
    """The backlog, POSTed by another key from POSTERS clients at once."""
    def post(i: int) -> None:
        r = httpx.post(f"{base}/v1/jobs", json={"idea": f"{IDEA} (backlog {i})"},
                       headers=AUTH_FLOOD, timeout=30)
        if r.status_code != 202:
            raise RuntimeError(f"POST /v1/jobs: {r.status_code} {r.text[:300]}")

    with ThreadPoolExecutor(POSTERS) as ex:
        list(ex.map(post, range(n)))


def _turn_tokens(read: TurnRead) -> float:
    usage = (read.turn or {}).get("usage") or {}
    return float(usage.get("input_tokens", 0) + usage.get("output_tokens", 0))


def _backlog_way(share: str, *, jobs: int, every_s: float, window_s: float, tpm: int, rpm: int
                 ) -> dict[str, Any]:
    """One way: a new interview every `every_s` within `window_s`, each read in a thread of
    its own; the window ends once the last has its first token (or failed)."""
    from masterplan.db.session import make_engine

    prefix = f"mpbench-iv-bl-{uuid.uuid4().hex[:8]}"
    label = f"INTERACTIVE_SHARE={share}"
    limits = {"TPM": str(tpm), "RPM": str(rpm), "TPD": "0", "RPD": "0"}
    reads: list[TurnRead] = []
    clients: list[httpx.Client] = []
    threads: list[threading.Thread] = []

    def one(c: httpx.Client, read: TurnRead) -> None:
        try:
            _start(c, read)
        except Exception as exc:  # noqa: BLE001 - cut when the stack is torn down
            if read.error is None and read.turn is None:
                read.error = {"error": f"{type(exc).__name__}: {exc}"}

    try:
        with H.fresh_database("mp_bench_iv") as db, \
                _fake(*_fake_args(tpm=tpm, rpm=rpm), name=f"fake-iv-backlog-{share}") as url:
            env = _env(db, prefix, LLM_PROVIDERS="groq", INTERACTIVE_SHARE=share,
                       **_provider_env("groq", url, limits))
            settings = H.settings_for(env)
            engine = make_engine(db)
            try:
                with _workers(env, [(*INTERACTIVE, "iv-interactive"),
                                    ("personas,pipeline", BATCH_CONCURRENCY, "iv-batch")]) as ws, \
                        _api(env, name="api-iv-backlog") as (base, _api_proc), \
                        httpx.Client(base_url=base, timeout=30) as client:
                    ws.ready()
                    _iid, warm = _start(client)  # an interview is active before the backlog
                    if warm.turn is None:
                        raise RuntimeError(f"the first turn failed: {warm.error}")
                    question_line = _reservation(Transcript().request(
                        None, settings.interview_question_max_tokens))
                    t0 = time.monotonic()
                    _post_jobs(base, jobs)
                    H.log(f"interview backlog, {label}: {jobs} jobs stored in "
                          f"{time.monotonic() - t0:.1f} s")
                    mon = _Monitor(base, engine, "groq")
                    capacity = int(mon.bucket(client)["token_capacity"])
                    line = _job_line(settings, capacity, float(share))
                    t1 = time.monotonic()
                    if not H.wait_until(lambda: mon.bucket(client)["tokens"] < line, timeout=90,
                                        interval=0.25):
                        raise RuntimeError("the backlog did not drain the provider's bucket")
                    H.log(f"interview backlog, {label}: bucket below {line} tokens after "
                          f"{time.monotonic() - t1:.1f} s")
                    stats0 = httpx.get(f"{url}/_fake/stats", timeout=10).json()
                    try:
                        with mon:
                            w0 = time.monotonic()
                            for k in range(max(1, int(window_s // every_s))):
                                time.sleep(max(0.0, w0 + k * every_s - time.monotonic()))
                                clients.append(httpx.Client(base_url=base, timeout=30))
                                reads.append(TurnRead())
                                threads.append(threading.Thread(
                                    target=one, args=(clients[-1], reads[-1]), daemon=True))
                                threads[-1].start()
                            H.wait_until(lambda: all(r.ttft_s is not None or r.error is not None
                                                     for r in reads), timeout=90, interval=0.1)
                            window = time.monotonic() - w0
                        stats1 = httpx.get(f"{url}/_fake/stats", timeout=10).json()
                        now = time.time()
                        unfinished = [round(now - r.sent_at, 1) for r in reads
                                      if r.turn is None and r.error is None]
                    finally:
                        for c in clients:  # the turns still streaming are cut here
                            c.close()
                        for t in threads:
                            t.join(10)
            finally:
                engine.dispose()
    finally:
        H.forget_keys(prefix)
    s = [x for x in mon.samples if w0 <= x["at"] <= w0 + window]
    n_s = max(1, len(s))
    charged = stats1["tokens_admitted"] - stats0["tokens_admitted"]
    ttfts = _ms([r.ttft_s for r in reads if r.ttft_s is not None])
    whole = _ms([r.done_s for r in reads if r.done_s is not None and r.turn is not None])
    waits = [r.names[:r.names.index("token")].count("wait") if "token" in r.names
             else r.names.count("wait") for r in reads]
    H.log(f"interview backlog, {label}: TTFT (ms) " + ", ".join(f"{v:.0f}" for v in ttfts)
          + f"; waits before the first token {waits}")
    return {"share": float(share), "turns": len(reads), "turns_with_first_token": len(ttfts),
            "waits_before_first_token": sum(waits),
            "turns_that_waited": sum(w > 0 for w in waits), **_pcts(ttfts, "ttft"),
            "ttft_ms": ttfts, "turns_finished": len(whole), **_pcts(whole, "turn"),
            "unfinished_turns_age_s": unfinished,
            "tokens_per_turn": (statistics.mean(v for r in reads if (v := _turn_tokens(r)))
                                if any(_turn_tokens(r) for r in reads) else None),
            "warm_up_turn_tokens": _turn_tokens(warm),
            "question_line_tokens": question_line,
            "share_of_time_bucket_below_question": sum(x["tokens"] < question_line
                                                       for x in s) / n_s,
            "window_s": round(window, 2), "samples": len(s),
            "job_line_tokens": line, "token_capacity": capacity,
            "share_of_time_jobs_queued": sum(x["queued"] > 0 for x in s) / n_s,
            "share_of_time_bucket_below_job_line": sum(x["tokens"] < line for x in s) / n_s,
            "bucket_tokens_mean": sum(x["tokens"] for x in s) / n_s,
            "jobs_running_mean": sum(x["running"] for x in s) / n_s,
            "jobs_finished_in_window": (s[-1]["finished"] - s[0]["finished"]) if s else 0.0,
            "provider_tokens_charged": charged,
            # as the rate-limit benchmark's: the most a client could be charged in the window
            "provider_share_of_allowance": charged / (capacity + tpm * window / 60),
            "provider_429s": int(stats1["by_status"].get("429", 0))}


def _backlog(*, jobs: int, every_s: float, window_s: float, tpm: int, rpm: int,
             idle: dict[str, Any]) -> dict[str, Any]:
    from masterplan.settings import Settings

    default = str(Settings.model_fields["interactive_share"].default)
    H.log(f"interview backlog: {jobs} jobs on a {tpm:,} TPM provider, a new interview every "
          f"{every_s:g} s for {window_s:g} s, INTERACTIVE_SHARE {default} then 0")
    kw: dict[str, Any] = {"jobs": jobs, "every_s": every_s, "window_s": window_s, "tpm": tpm,
                          "rpm": rpm}
    ways = {"share": _backlog_way(default, **kw), "no_share": _backlog_way("0", **kw)}
    first = idle["first_turn"]
    for way in ways.values():
        for p in (50, 95):
            way[f"ratio_p{p}"] = way[f"ttft_p{p}_ms"] / first[f"system_p{p}_ms"]
    return {"jobs": jobs, "tpm": tpm, "rpm": rpm, "every_s": every_s, "window_s": window_s,
            "latency_s": LATENCY_S, **ways}


# ------------------------------------------------------------------ 3. structured turns


CASES = {
    "truncated": ("--truncate-rate", "0.3", "--seed", "7"),
    "ignores_instructions": ("--ignore-instructions",),
}


def _classify(rows: list[Any], first: str) -> str:
    """A turn's ledger rows (in order): its question call, then the structured part's calls."""
    i = next((k for k, r in enumerate(rows) if r.outcome == "ok"), len(rows))
    structured = rows[i + 1:]
    ok = [r for r in structured if r.outcome == "ok"]
    if not ok:
        return "failed"
    if ok[-1].provider != first:
        return "fallback"
    return "repaired" if any(r.outcome == "invalid_output" for r in structured) else "clean"


def _structured_case(base: str, engine: Any, env: dict[str, str], case: str, n: int,
                     healthy: str) -> dict[str, Any]:
    import sqlalchemy as sa

    with _fake(*_fake_args(latency_s=0.05, chunk_delay_s=0.0, flavor="openai",
                           extra=CASES[case]), name=f"fake-iv-{case}") as bad:
        wenv = {**env, "LLM_PROVIDERS": "openai,groq", **_provider_env("openai", bad),
                **_provider_env("groq", healthy)}
        reads: list[tuple[str, TurnRead]] = []
        with _workers(wenv, [(*INTERACTIVE, f"iv-{case}")]) as ws, \
                httpx.Client(base_url=base, timeout=30) as client:
            ws.ready()
            for _ in range(n):
                reads.append(_start(client))
        fake_stats = httpx.get(f"{bad}/_fake/stats", timeout=10).json()
    kinds = {"clean": 0, "repaired": 0, "fallback": 0, "failed": 0}
    outcomes: dict[str, int] = {}
    with engine.connect() as c:
        for iid, _read in reads:
            rows = c.execute(sa.text(
                "SELECT provider, outcome FROM llm_calls WHERE interview_id = :id "
                "AND stage = 'interview' ORDER BY id"), {"id": iid}).all()
            kinds[_classify(rows, "openai")] += 1
            for r in rows:
                outcomes[f"{r.provider}:{r.outcome}"] = outcomes.get(
                    f"{r.provider}:{r.outcome}", 0) + 1
    with_structured = sum(r.turn is not None and r.turn["structured"] is not None
                          for _, r in reads)
    return {"turns": n, "structured": with_structured, "success": with_structured / n,
            "text_failed": sum(r.turn is None for _, r in reads),
            "needed_repair": kinds["repaired"], "needed_fallback": kinds["fallback"],
            "clean": kinds["clean"], "structured_failed": kinds["failed"],
            "ledger_rows": outcomes, "fake_faults": fake_stats.get("faults")}


# ------------------------------------------------------------------ 4. open streams


def _quiet_turns(db_url: str, n: int) -> list[str]:
    """Interviews whose first turn is `streaming`, written directly (not timed); their tasks
    are never published, so their streams stay open and quiet."""
    from api.deps import owner_of
    from masterplan.db.models import Interview, InterviewStatus, InterviewTurn, TurnStatus, utcnow
    from masterplan.db.session import make_engine, make_sessionmaker

    engine = make_engine(db_url)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    try:
        with make_sessionmaker(engine).begin() as s:
            now = utcnow()
            for i, iid in enumerate(ids):
                s.add(Interview(id=iid, owner=owner_of(H.API_KEY), idea=f"{IDEA} (stream {i})",
                                status=InterviewStatus.OPEN.value, created_at=now,
                                updated_at=now))
            s.flush()
            for iid in ids:
                s.add(InterviewTurn(interview_id=iid, n=1, status=TurnStatus.STREAMING.value,
                                    created_at=now))
    finally:
        engine.dispose()
    return ids


def _latencies(client: httpx.Client, n: int, interview_id: str) -> dict[str, list[float]]:
    """n sequential requests of each kind: milliseconds each."""
    kinds = {"healthz": ("/healthz", {}), "jobs": ("/v1/jobs", H.AUTH),
             "interview": (f"/v1/interviews/{interview_id}", H.AUTH)}
    out: dict[str, list[float]] = {k: [] for k in kinds}
    for kind, (path, headers) in kinds.items():
        for _ in range(n):
            t0 = time.perf_counter()
            r = client.get(path, headers=headers)
            out[kind].append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:300]}")
    return out


def _cpu_pct(pid: int, seconds: float) -> float:
    c0, t0 = H.tree_cpu(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (H.tree_cpu(pid) - c0) / (time.monotonic() - t0)


@contextmanager
def _holder(base: str, paths: list[str], n: int) -> Iterator[dict[str, float]]:
    """The helper process holding n streams open; yields its report once each has its
    response headers (or failed)."""
    paths_file = H.LOG_DIR / "interview-streams.json"
    paths_file.write_text(json.dumps(paths))
    proc = Proc([str(BIN / "python"), "-m", "bench.interview", "hold", "--base", base,
                 "--streams", str(n), "--paths-file", str(paths_file)],
                clean_env(BENCH_INTERVIEW_KEY=H.API_KEY), H.LOG_DIR / "interview-holder.log")
    try:
        deadline = time.monotonic() + 180
        while True:
            lines = [ln for ln in proc.output().splitlines() if ln.startswith("OPEN ")]
            if lines:
                _, opened, failed, seconds = lines[0].split()
                break
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"stream holder did not report: {proc.output()[-2000:]}")
            time.sleep(0.1)
        yield {"opened": float(opened), "failed": float(failed), "open_s": float(seconds)}
    finally:
        proc.stop()


def _streams(base: str, api_pid: int, db_url: str, n: int, requests: int) -> dict[str, Any]:
    ids = _quiet_turns(db_url, n)
    paths = [f"/v1/interviews/{iid}/turns/1/events" for iid in ids]
    out: dict[str, Any] = {"streams": n, "requests": requests}
    with httpx.Client(base_url=base, timeout=30) as client:
        _latencies(client, 20, ids[0])  # warm-up
        out["api_cpu_pct_quiet_no_streams"] = _cpu_pct(api_pid, QUIET_S)
        idle = _latencies(client, requests, ids[0])
        with _holder(base, paths, n) as held:
            out |= {"streams_open": held["opened"], "streams_failed": held["failed"],
                    "open_s": held["open_s"]}
            time.sleep(SETTLE_S)
            out["api_cpu_pct_quiet_streams"] = _cpu_pct(api_pid, QUIET_S)
            loaded = _latencies(client, requests, ids[0])
            with client.stream("GET", paths[0], headers=H.AUTH) as more:  # one more is taken
                out["one_more_stream_status"] = more.status_code
    for kind in idle:
        for p in (50, 95):
            i, lo = H.percentile(idle[kind], p), H.percentile(loaded[kind], p)
            out[f"{kind}_idle_p{p}_ms"] = i
            out[f"{kind}_loaded_p{p}_ms"] = lo
            out[f"{kind}_ratio_p{p}"] = lo / i
    return out


# ------------------------------------------------------------------ the whole benchmark


def measure_interview(*, turns: int, backlog_jobs: int, backlog_every_s: float,
                      backlog_window_s: float, backlog_tpm: int, backlog_rpm: int,
                      structured_turns: int, streams: int, requests: int) -> dict[str, Any]:
    """The four parts (see the module's docstring)."""
    from masterplan.db.session import make_engine

    prefix = f"mpbench-iv-{uuid.uuid4().hex[:8]}"
    out: dict[str, Any] = {"latency_s": LATENCY_S, "chunk_chars": CHUNK_CHARS,
                           "chunk_delay_s": CHUNK_DELAY_S,
                           "turns_per_interview": TURNS_PER_INTERVIEW}
    try:
        with H.fresh_database("mp_bench_iv") as db, \
                _fake(*_fake_args(), name="fake-iv-idle") as idle_url, \
                _fake(*_fake_args(latency_s=0.05, chunk_delay_s=0.0),
                      name="fake-iv-healthy") as healthy:
            env = _env(db, prefix, LLM_PROVIDERS="groq", MAX_STREAMS=str(streams + 10),
                       MAX_STREAMS_PER_KEY=str(streams + 10),
                       **_provider_env("groq", idle_url))
            engine = make_engine(db)
            try:
                with _workers(env, [(*INTERACTIVE, "iv-interactive")]) as ws, \
                        _api(env, name="api-iv") as (base, api):
                    ws.ready()
                    H.log(f"interview TTFT, idle: {turns} answered turns, system and direct "
                          "alternating")
                    out["idle"] = _ttft_idle(base, env, idle_url, turns)
                    out["idle"]["breakdown"] = _breakdown(engine, out["idle"].pop("marks"),
                                                          out["idle"]["direct_p50_ms"])
                    ws.stop()
                    _log_idle(out["idle"])
                    out["structured"] = {}
                    for case in CASES:
                        H.log(f"interview structured turns, {case}: {structured_turns} turns, "
                              "openai faulty, groq healthy")
                        out["structured"][case] = _structured_case(
                            base, engine, env, case, structured_turns, healthy)
                        c = out["structured"][case]
                        H.log(f"  {c['structured']}/{c['turns']} structured; repair "
                              f"{c['needed_repair']}, fallback {c['needed_fallback']}")
                    H.log(f"interview streams: {streams} quiet turn streams on one API "
                          f"process, {requests} requests of each kind idle and loaded")
                    out["streams"] = _streams(base, api.pid, db, streams, requests)
            finally:
                engine.dispose()
    finally:
        H.forget_keys(prefix)
    out["backlog"] = _backlog(jobs=backlog_jobs, every_s=backlog_every_s,
                              window_s=backlog_window_s, tpm=backlog_tpm, rpm=backlog_rpm,
                              idle=out["idle"])
    for line in summary(out):
        H.log(line)
    return out


def _log_idle(r: dict[str, Any]) -> None:
    H.log(f"  answered turns: system p50 {r['system_p50_ms']:.0f} ms, direct "
          f"{r['direct_p50_ms']:.0f} ms, added p50 {r['added_p50_ms']:.1f} / p95 "
          f"{r['added_p95_ms']:.1f} ms; breakdown (medians) {r.get('breakdown')}")


def summary(r: dict[str, Any]) -> list[str]:
    """The figures as lines of text (printed at the end of the run)."""
    out = ["interview results:"]
    if i := r.get("idle"):
        f = i["first_turn"]
        out += [f"  1. TTFT idle, {i['turns']} answered turns: system p50 {i['system_p50_ms']:.1f}"
                f" / p95 {i['system_p95_ms']:.1f} ms; direct SDK p50 {i['direct_p50_ms']:.1f} / "
                f"p95 {i['direct_p95_ms']:.1f} ms; added p50 {i['added_p50_ms']:.1f} / p95 "
                f"{i['added_p95_ms']:.1f} ms (goal < 50); whole turn p50 "
                f"{i['turn_p50_ms']:.0f} / p95 {i['turn_p95_ms']:.0f} ms",
                f"     first turns ({f['turns']}, POST /v1/interviews + GET events): system p50 "
                f"{f['system_p50_ms']:.1f} / p95 {f['system_p95_ms']:.1f} ms; added p50 "
                f"{f['added_p50_ms']:.1f} / p95 {f['added_p95_ms']:.1f} ms",
                f"     where an answered turn's time goes (medians, ms): {i.get('breakdown')}"]
    if b := r.get("backlog"):
        for key in ("share", "no_share"):
            w = b[key]
            out.append(
                f"  2. first-turn TTFT behind {b['jobs']} jobs on {b['tpm']:,} TPM, "
                f"INTERACTIVE_SHARE={w['share']:g}: p50 {w['ttft_p50_ms']:.0f} / p95 "
                f"{w['ttft_p95_ms']:.0f} ms ({w['ratio_p50']:.2f}x / {w['ratio_p95']:.2f}x idle; "
                f"goal <= 2x) over {w['turns_with_first_token']}/{w['turns']} turns, "
                f"{w['turns_that_waited']} waited before their first token; whole turn p50 "
                f"{w['turn_p50_ms'] / 1000:.1f} / p95 {w['turn_p95_ms'] / 1000:.1f} s "
                f"({w['turns_finished']} finished); jobs queued "
                f"{100 * w['share_of_time_jobs_queued']:.0f}% of the window, bucket below a "
                f"job call's line {100 * w['share_of_time_bucket_below_job_line']:.0f}% and "
                f"below a question's {100 * w['share_of_time_bucket_below_question']:.0f}%, "
                f"provider share of allowance {w['provider_share_of_allowance']:.2f}, 429s "
                f"{w['provider_429s']}")
    for case, c in (r.get("structured") or {}).items():
        out.append(f"  3. structured turns, {case}: {c['structured']}/{c['turns']} "
                   f"({100 * c['success']:.0f}%, goal 100%); repair {c['needed_repair']}, "
                   f"fallback {c['needed_fallback']}, clean {c['clean']}")
    if s := r.get("streams"):
        out.append(
            f"  4. {s['streams_open']:.0f} turn streams open ({s['streams_failed']:.0f} failed): "
            + "; ".join(f"{k} p50 {s[f'{k}_loaded_p50_ms']:.1f} ms ({s[f'{k}_ratio_p50']:.2f}x), "
                        f"p95 {s[f'{k}_loaded_p95_ms']:.1f} ms ({s[f'{k}_ratio_p95']:.2f}x)"
                        for k in ("healthz", "jobs", "interview"))
            + f"; API CPU with the streams quiet {s['api_cpu_pct_quiet_streams']:.1f}% "
              f"(none: {s['api_cpu_pct_quiet_no_streams']:.1f}%)")
    return out


# ------------------------------------------------------------------ helper processes


def _keep_going(prompt: Any) -> Any:
    """The fake's honest answer, except that a turn's structured part says `done: false`: the
    interview goes on for as many turns as the benchmark asks."""
    from testkit.fake_wire import default_responder

    answer = default_responder(prompt)
    if isinstance(answer, dict) and "done" in answer and "eval" in answer:
        answer = {**answer, "done": False}
    return answer


def _fake_main(argv: list[str]) -> int:
    from testkit.fake_provider import FakeProvider, serve

    p = argparse.ArgumentParser(prog="python -m bench.interview fake")
    p.add_argument("--flavor", default="groq")
    p.add_argument("--api-key", required=True)
    p.add_argument("--tpm", type=int, default=None)
    p.add_argument("--rpm", type=int, default=None)
    p.add_argument("--latency-s", type=float, default=0.0)
    p.add_argument("--chunk-chars", type=int, default=CHUNK_CHARS)
    p.add_argument("--chunk-delay-s", type=float, default=0.0)
    p.add_argument("--truncate-rate", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ignore-instructions", action="store_true")
    a = p.parse_args(argv)
    fake = FakeProvider(flavor=a.flavor, tpm=a.tpm, rpm=a.rpm, api_key=a.api_key,
                        responder=_keep_going, latency_s=a.latency_s, chunk_chars=a.chunk_chars,
                        truncate_rate=a.truncate_rate, seed=a.seed,
                        ignore_instructions=a.ignore_instructions)
    fake.chunk_delay_s = a.chunk_delay_s
    return serve(fake)


def _hold_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.interview hold")
    p.add_argument("--base", required=True)
    p.add_argument("--streams", type=int, required=True)
    p.add_argument("--paths-file", type=Path, required=True)
    a = p.parse_args(argv)
    paths = json.loads(a.paths_file.read_text())
    # A turn that never runs sends nothing: a stream counts as open at its response.
    return asyncio.run(hold(a.base, paths, a.streams, os.environ["BENCH_INTERVIEW_KEY"],
                            ready_at_data=False))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "fake":
        raise SystemExit(_fake_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "hold":
        raise SystemExit(_hold_main(sys.argv[2:]))
    raise SystemExit("usage: python -m bench.interview fake|hold ...   (the benchmark itself "
                     "runs from `python -m bench --only interview`)")
