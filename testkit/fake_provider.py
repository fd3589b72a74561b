"""A local fake LLM provider that speaks the real OpenAI and Anthropic wire formats.

The real `openai` and `anthropic` SDKs work against it with `base_url` pointed at it, so tests
and benchmarks exercise the project's adapters, retries and rate limiting end to end:

    with FakeProvider(tpm=6000, rpm=30, flavor="groq", api_key="sk-x") as fake:
        client = openai.OpenAI(base_url=fake.openai_base_url, api_key="sk-x")

Served: `POST .../chat/completions` (any prefix, e.g. Gemini's `/v1beta/openai`) and
`POST /v1/messages`, streaming or not; token-bucket TPM/RPM limits with the providers' headers
and 429 bodies; fault injection (`fail_next`, `set_mode`, `fail_stream_after`, `stall_stream_after`,
`cut_stream_end`, `latency_s`) and
seeded random faults (`error_rate`: 500/503, or 500/529 in the Anthropic style; `truncate_rate`:
a 200 whose content is cut in the middle, its tokens still charged).

Structured output is honest (`fake_wire.default_responder`): only a request that carries a
schema (`response_format: json_schema`, a forced tool's `input_schema`) gets an answer that fits
it; JSON mode gets some JSON object, no response_format gets prose, whatever the prompt says.
`json_schema_unsupported` answers json_schema requests 400, as a model without structured
outputs does; `ignore_instructions` answers even those with JSON that fits no schema.

Daily caps (`rpd`, `tpd`) add a day bucket each, counted as `day_reset` says ("rolling", as
Groq's day refills, or a fixed window reset at midnight in a zone: "UTC", or
"America/Los_Angeles" as Gemini's): past one, the 429 names the day in each provider's words
(Groq's "requests per day (RPD)", Gemini's PerDay quotaId, ...), and a groq-flavoured fake's
`x-ratelimit-*-requests` headers describe its requests per day, as Groq's do. `limit_counts`
says how a call is settled: "actual" (admission charges prompt + max_tokens, the reply refunds
what it did not use) or "reserved" (the admission charge is kept, as OpenAI counts max_tokens).

As a separate process (prints `READY <url>`, serves until SIGTERM):

    python -m testkit.fake_provider --port 0 --tpm 6000 --rpm 30 --flavor groq \
        --error-rate 0.3 --truncate-rate 0.2 --seed 7 [--json-schema-unsupported] \
        [--ignore-instructions] [--rpd 14400 --tpd 500000 --day-reset rolling] \
        [--limit-counts reserved]

and is driven over HTTP: `GET /_fake/stats`, `POST /_fake/reset`, `POST /_fake/fail_next`,
`POST /_fake/mode`, `POST /_fake/consume`, `POST /_fake/latency`, `POST /_fake/fail_stream_after`,
`POST /_fake/faults`. The stats say what a provider's bill and logs would: requests received,
open now (`in_flight`, with the client ports), answered by status, tokens charged
(`tokens_admitted`) and charged answers that never reached their client (`undelivered`).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, Self

from testkit.fake_cache import PromptCache
from testkit.fake_http import FakeHandler, FakeServer, Hangup, Traffic, handler_for
from testkit.fake_limits import (
    Bucket,
    BucketState,
    DayWindow,
    Draw,
    Faults,
    daily_limit_message,
    day_bucket,
    error_body,
    limit_headers,
    rate_limit_message,
    retry_headers,
    style_for,
    too_large_message,
)
from testkit.fake_wire import (
    FLAVORS,
    Api,
    BadRequest,
    FakePrompt,
    Flavor,
    Responder,
    anthropic_events,
    anthropic_message,
    default_responder,
    make_reply,
    new_id,
    off_schema_answer,
    openai_chunks,
    openai_completion,
    parse_anthropic,
    parse_openai,
    tokens_of,
)

__all__ = ["FakeCall", "FakePrompt", "FakeProvider", "Mode", "Responder", "default_responder"]

Mode = Literal["ok", "down", "invalid_json", "hang"]
MODES: tuple[str, ...] = ("ok", "down", "invalid_json", "hang")


# What each provider answers (400) to response_format json_schema on a model without it.
_NO_JSON_SCHEMA = {
    "openai": "Invalid parameter: 'response_format' of type 'json_schema' is not supported with "
              "this model.",
    "groq": "This model does not support response format `json_schema`. See supported models at "
            "https://console.groq.com/docs/structured-outputs#supported-models",
    "gemini": "response_format json_schema is not supported by this model",
}


@dataclass(slots=True)
class FakeCall:
    """One request the fake received on a provider endpoint."""

    path: str
    api: Api
    headers: dict[str, str]  # lower-cased names
    body: Any  # the parsed JSON (None when it was not JSON)
    status: int  # 0: no response (mode "down" or "hang")
    input_tokens: int
    output_tokens: int
    streamed: bool
    at: float  # time.monotonic() on arrival
    client_port: int = 0
    fault: str | None = None  # "error" or "truncated" when a random fault hit it
    charged: int = 0  # tokens the buckets were finally charged for it (a 200 only)


@dataclass(slots=True)
class _Failure:
    status: int
    retry_after_s: float | None
    body: Any


class FakeProvider:
    """A fake OpenAI-compatible and Anthropic-compatible LLM server on 127.0.0.1."""

    def __init__(
        self,
        *,
        flavor: Flavor = "openai",
        tpm: int | None = None,
        rpm: int | None = None,
        burst_tokens: int | None = None,
        burst_requests: int | None = None,
        api_key: str | None = None,
        responder: Responder | None = None,
        latency_s: float = 0.0,
        port: int = 0,
        host: str = "127.0.0.1",
        default_max_tokens: int = 1024,
        chunk_chars: int = 24,
        hang_s: float = 30.0,
        error_rate: float = 0.0,
        truncate_rate: float = 0.0,
        seed: int | None = None,
        json_schema_unsupported: bool = False,
        ignore_instructions: bool = False,
        rpd: int | None = None,
        tpd: int | None = None,
        day_reset: str = "UTC",
        limit_counts: Literal["actual", "reserved"] = "actual",
        prompt_cache: bool = True,
    ) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r}; expected one of {', '.join(FLAVORS)}")
        if limit_counts not in ("actual", "reserved"):
            raise ValueError(f"limit_counts must be 'actual' or 'reserved', not {limit_counts!r}")
        self.rpd, self.tpd, self.day_reset = rpd, tpd, day_reset
        self.limit_counts = limit_counts
        self.flavor: Flavor = flavor
        self.tpm, self.rpm = tpm, rpm
        self.burst_tokens, self.burst_requests = burst_tokens, burst_requests
        self.api_key = api_key
        self.responder: Responder = responder or default_responder
        self.latency_s = latency_s
        self.chunk_delay_s = 0.0  # pause between streamed chunks
        self.default_max_tokens = default_max_tokens  # charged when a request names none
        self.chunk_chars = chunk_chars
        self.hang_s = hang_s
        # A model without structured outputs: json_schema requests are a 400 (JSON mode works).
        self.json_schema_unsupported = json_schema_unsupported
        # A model that ignores formatting: a schema or forced tool still gets off-schema JSON.
        self.ignore_instructions = ignore_instructions
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._calls: list[FakeCall] = []
        self._failures: list[_Failure] = []
        self._stream_break: int | None = None
        self._stream_stall: int | None = None
        self._stream_cut: Literal["end", "usage"] | None = None
        self._mode: str = "ok"
        self._tokens_admitted = 0
        self._wake = threading.Event()  # set to end hangs and latency sleeps early
        self._faults = Faults(error_rate, truncate_rate, seed)
        self.traffic = Traffic()
        # What each API reports as cached input (testkit/fake_cache.py); False: never any.
        self.prompt_cache = PromptCache(enabled=prompt_cache)
        self._tokens: Bucket | None = None
        self._requests: Bucket | None = None
        self._day_tokens: Bucket | DayWindow | None = None
        self._day_requests: Bucket | DayWindow | None = None
        self._refill_buckets()
        self._server: FakeServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        if self._server is not None:
            return self
        server = FakeServer((self._host, self._port), handler_for(self))
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name="fake-provider", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._kick()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # idle keep-alive connections: let their threads end now
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake provider is not running; call start()")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    # ------------------------------------------------------------ control

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int,
        retry_after_s: float | None = None,
        body: dict[str, Any] | list[Any] | None = None,
    ) -> None:
        """Queue `n` failures with `status` and a flavour-shaped body (or `body` as given)."""
        with self._lock:
            self._failures.extend(_Failure(status, retry_after_s, body) for _ in range(n))

    def set_mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        with self._lock:
            self._mode = mode
        self._kick()

    @property
    def mode(self) -> str:
        return self._mode

    def fail_stream_after(self, chunks: int) -> None:
        """Break the next stream (close the connection) after `chunks` content chunks."""
        with self._lock:
            self._stream_break = chunks

    def stall_stream_after(self, chunks: int) -> None:
        """The next stream goes silent after `chunks` content chunks (0: right after its headers
        and opening events) for `hang_s`, or until `reset`/`set_mode`/`stop`, then goes on."""
        with self._lock:
            self._stream_stall = chunks

    def cut_stream_end(self, what: Literal["end", "usage"] = "end") -> None:
        """The next stream ends cleanly but without its end. "end": nothing after its last
        content chunk (OpenAI: no finish_reason chunk, no usage chunk, no [DONE]; Anthropic: no
        content_block_stop, message_delta or message_stop). "usage": OpenAI's usage chunk alone
        is left out (asked for with stream_options.include_usage); Anthropic's message_stop."""
        if what not in ("end", "usage"):
            raise ValueError(f"cut_stream_end takes 'end' or 'usage', not {what!r}")
        with self._lock:
            self._stream_cut = what

    def set_faults(self, *, error_rate: float | None = None, truncate_rate: float | None = None,
                   seed: int | None = None) -> None:
        """Change the random fault rates (None: unchanged); a seed restarts the sequence."""
        with self._lock:
            self._faults.configure(error_rate=error_rate, truncate_rate=truncate_rate, seed=seed)

    def consume(self, tokens: int) -> None:
        """Take `tokens` from the TPM bucket, as another client of the same key would.

        The bucket may go below zero; it then needs longer to refill. No-op without `tpm`.
        """
        with self._lock:
            for bucket in (self._tokens, self._day_tokens):
                if bucket is not None:
                    bucket.refill(time.monotonic())
                    bucket.level -= tokens

    def reset(self) -> None:
        """Forget calls, counters, queued failures, stream breaks and mode; refill the buckets.
        The random fault rates stay (set them with `set_faults`)."""
        self.traffic.reset()
        with self._lock:
            self._faults.counts.update(error=0, truncated=0)
            self._calls.clear()
            self._failures.clear()
            self._stream_break = None
            self._stream_stall = self._stream_cut = None
            self._mode = "ok"
            self._tokens_admitted = 0
            self._refill_buckets()
        self._kick()

    # ------------------------------------------------------------ observation

    @property
    def calls(self) -> list[FakeCall]:
        with self._lock:
            return list(self._calls)

    def count(self, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for c in self._calls if status is None or c.status == status)

    @property
    def tokens_admitted(self) -> int:
        """Tokens finally charged for the successful requests (input + output each)."""
        with self._lock:
            return self._tokens_admitted

    def stats(self) -> dict[str, Any]:
        with self._lock:
            by_status = Counter(str(c.status) for c in self._calls)
            mine = {
                "calls": len(self._calls),
                "by_status": dict(by_status),
                "tokens_admitted": self._tokens_admitted,
                "mode": self._mode,
                "faults": self._faults.state(),
                "json_schema_unsupported": self.json_schema_unsupported,
                "ignore_instructions": self.ignore_instructions,
                "limit_counts": self.limit_counts,
                "day": {kind: None if b is None else math.floor(b.level)
                        for kind, b in (("tokens", self._day_tokens),
                                        ("requests", self._day_requests))},
            }
        return mine | self.traffic.state()

    # ------------------------------------------------------------ internals

    def _refill_buckets(self) -> None:
        self._tokens = Bucket(self.tpm, self.burst_tokens) if self.tpm else None
        self._requests = Bucket(self.rpm, self.burst_requests) if self.rpm else None
        self._day_tokens = day_bucket(self.tpd, self.day_reset) if self.tpd else None
        self._day_requests = day_bucket(self.rpd, self.day_reset) if self.rpd else None

    def _kick(self) -> None:
        wake, self._wake = self._wake, threading.Event()
        wake.set()

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._wake.wait(seconds)

    def _states(self) -> tuple[BucketState | None, BucketState | None]:
        """Bucket states for the headers; call with the lock held."""
        now = time.monotonic()
        for b in (self._tokens, self._requests, self._day_tokens, self._day_requests):
            if b is not None:
                b.refill(now)
        # Groq's x-ratelimit-*-requests are always about its requests per day.
        requests = self._day_requests if self.flavor == "groq" and self._day_requests else \
            self._requests
        return (
            self._tokens.state() if self._tokens else None,
            requests.state() if requests else None,
        )

    def _admit(self, need: int) -> tuple[str, float, int, int, int] | None:
        """Charge `need` tokens and one request, or say what does not fit: (kind, wait_s,
        limit, used, requested). Call with the lock held."""
        now = time.monotonic()
        waits: list[tuple[float, str, Bucket | DayWindow, int]] = []
        for kind, bucket, amount in (("tokens", self._tokens, need), ("requests", self._requests, 1),
                                     ("tokens-day", self._day_tokens, need),
                                     ("requests-day", self._day_requests, 1)):
            if bucket is not None:
                bucket.refill(now)
                wait = bucket.wait_for(amount)
                if wait > 0:
                    waits.append((wait, kind, bucket, amount))
        if waits:
            wait, kind, bucket, amount = max(waits, key=lambda w: w[0])
            used = max(0, round(bucket.capacity - bucket.level))
            return kind, wait, bucket.limit, used, amount
        for day, amount in ((self._day_tokens, need), (self._day_requests, 1)):
            if day is not None:
                day.level -= amount
        if self._tokens is not None:
            self._tokens.level -= need
        if self._requests is not None:
            self._requests.level -= 1
        return None

    def _settle(self, charged: int, actual: int, *, answered: bool = True) -> int:
        """Correct an admission charge to the tokens really used (refund or extra); with
        `limit_counts="reserved"` an answered call keeps its admission charge (no refund, extra
        still charged). Returns the tokens finally charged."""
        final = max(charged, actual) if answered and self.limit_counts == "reserved" else actual
        with self._lock:
            for bucket in (self._tokens, self._day_tokens):
                if bucket is not None:
                    bucket.refill(time.monotonic())
                    bucket.level = min(float(bucket.capacity), bucket.level + charged - final)
            self._tokens_admitted += actual
        return final

    def _record(self, call: FakeCall) -> None:
        with self._lock:
            self._calls.append(call)

    def _key_ok(self, api: Api, headers: dict[str, str]) -> bool:
        """The exact key: `Authorization: Bearer <key>`, or `x-api-key` on the Anthropic API
        (the Anthropic SDK sends a bearer header since 2.x; older ones send `x-api-key`)."""
        if self.api_key is None:
            return True
        if api == "anthropic" and "x-api-key" in headers:
            return headers["x-api-key"] == self.api_key
        return headers.get("authorization") == f"Bearer {self.api_key}"

    def _refusal(self, style: str, prompt: FakePrompt, need: int) -> tuple[int, Any, float | None]:
        """Admit the request into the buckets, or (status, body, retry_after_s) of the 429."""
        with self._lock:
            refused = self._admit(need)
        if refused is None:
            return 0, None, None
        kind, wait, limit, used, requested = refused
        daily, kind = kind.endswith("-day"), kind.removesuffix("-day")
        err_type = kind if style in ("openai", "groq") else None
        if daily and not math.isinf(wait):
            msg = daily_limit_message(style, prompt.model, kind=kind, limit=limit, used=used,
                                      requested=requested, wait_s=wait)
            quota = f"{kind}-day"
            return 429, error_body(style, 429, msg, retry_after_s=wait, err_type=err_type,
                                   quota=quota), wait
        if math.isinf(wait):  # larger than the bucket: it will never fit
            status = 413 if style == "groq" else 429
            msg = too_large_message(style, prompt.model, limit=limit, requested=requested)
            return status, error_body(style, status, msg, err_type=err_type), None
        msg = rate_limit_message(
            style, prompt.model, kind=kind, limit=limit, used=used, requested=requested, wait_s=wait
        )
        return 429, error_body(style, 429, msg, retry_after_s=wait, err_type=err_type,
                               quota=kind), wait

    def _failure_body(self, style: str, prompt: FakePrompt, failure: _Failure) -> Any:
        if failure.body is not None:
            return failure.body
        msg = None
        if failure.status == 429 and failure.retry_after_s is not None:
            msg = rate_limit_message(
                style, prompt.model, kind="requests", limit=self.rpm or 0, used=self.rpm or 0,
                requested=1, wait_s=failure.retry_after_s,
            )
        return error_body(style, failure.status, msg, retry_after_s=failure.retry_after_s)

    def handle(self, h: FakeHandler, path: str, raw: bytes) -> None:
        """Serve one provider request (on the connection's thread), counting it in `traffic`
        from arrival until its answer is out (or lost)."""
        api: Api = "anthropic" if path.rstrip("/").endswith("/messages") else "openai"
        headers = {k.lower(): v for k, v in h.headers.items()}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        streamed = isinstance(body, dict) and bool(body.get("stream"))
        call = FakeCall(path, api, headers, body, 0, 0, 0, streamed, time.monotonic(),
                        client_port=int(h.client_address[1]))
        self.traffic.opened(call, call.client_port)
        delivered = False
        try:
            self._serve(h, call)
            delivered = True
        finally:
            charged = call.input_tokens + call.output_tokens if call.status == 200 else 0
            self.traffic.closed(call, status=call.status, delivered=delivered, tokens=charged)

    def _serve(self, h: FakeHandler, call: FakeCall) -> None:
        """Everything is decided and recorded before the first byte goes out, so a client that
        has its answer sees the call."""
        api, headers, body = call.api, call.headers, call.body
        style = style_for(self.flavor, api)
        rid = new_id("req_")
        ids = {"request-id": rid} if api == "anthropic" else {"x-request-id": rid}

        def fail(status: int, err: Any, retry_after_s: float | None = None) -> None:
            with self._lock:
                extra = {**ids, **limit_headers(style, *self._states())}
            extra.update(retry_headers(style, retry_after_s))
            call.status = status
            self._record(call)
            if h.peer_gone():
                raise Hangup
            h.send_json(status, err, extra)

        mode = self._mode
        if mode in ("down", "hang"):
            self._record(call)
            if mode == "hang":
                self._sleep(self.hang_s)
            raise Hangup
        if not self._key_ok(api, headers):
            return fail(401, error_body(style, 401))
        if not isinstance(body, dict):
            return fail(400, error_body(style, 400, "The request body is not valid JSON."))
        try:
            prompt = parse_anthropic(body) if api == "anthropic" else parse_openai(body)
        except BadRequest as exc:
            return fail(400, error_body(style, 400, str(exc), code="invalid_request"))
        if self.json_schema_unsupported and prompt.json_mode == "json_schema":
            return fail(400, error_body(style, 400, _NO_JSON_SCHEMA.get(style, _NO_JSON_SCHEMA[
                "openai"]), err_type="invalid_request_error"))
        call.input_tokens = tokens_of(prompt.input_chars)
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
            draw: Draw = self._faults.draw(style)
        if failure is not None:
            err = self._failure_body(style, prompt, failure)
            return fail(failure.status, err, failure.retry_after_s)
        if draw.error_status is not None:
            call.fault = "error"
            return fail(draw.error_status, error_body(style, draw.error_status))
        need = call.input_tokens + (prompt.max_tokens or self.default_max_tokens)
        status, err, wait = self._refusal(style, prompt, need)
        if status:
            return fail(status, err, wait)
        try:
            if self.ignore_instructions and prompt.wants_json:
                answer: str | dict[str, Any] = off_schema_answer(prompt)
            else:
                answer = self.responder(prompt)
            reply = make_reply(prompt, answer, invalid_json=mode == "invalid_json", cut=draw.cut)
            cached = self.prompt_cache.lookup(prompt, reply.input_tokens, time.monotonic())
            reply.cached_tokens, reply.cache_write_tokens = cached.read, cached.written
        except Exception as exc:  # noqa: BLE001 - a broken responder is a 500, like a provider bug
            self._settle(need, 0, answered=False)
            return fail(500, error_body(style, 500, f"responder failed: {exc!r}"))
        call.charged = self._settle(need, reply.input_tokens + reply.output_tokens)
        call.output_tokens, call.status = reply.output_tokens, 200
        with self._lock:
            if draw.cut:
                call.fault = "truncated"
                self._faults.counts["truncated"] += 1
            extra = {**ids, **limit_headers(style, *self._states())}
            breaks, self._stream_break = (
                (self._stream_break, None) if prompt.stream else (None, self._stream_break)
            )
            stalls, self._stream_stall = (
                (self._stream_stall, None) if prompt.stream else (None, self._stream_stall)
            )
            cut, self._stream_cut = (
                (self._stream_cut, None) if prompt.stream else (None, self._stream_cut)
            )
        self._record(call)
        self._sleep(self.latency_s)
        if h.peer_gone():
            raise Hangup  # charged, and nobody to tell: the client died or gave up meanwhile
        if not prompt.stream:
            if api == "anthropic":
                return h.send_json(200, anthropic_message(prompt, reply), extra)
            return h.send_json(200, openai_completion(prompt, reply), extra)
        if api == "anthropic":
            frames = anthropic_events(prompt, reply, self.chunk_chars)
        else:
            frames = openai_chunks(prompt, reply, self.chunk_chars)
        if cut is not None:
            frames = iter(_without_end(list(frames), api, cut))
        h.start_stream(extra)
        sent = 0
        for is_content, frame in frames:
            if is_content:
                if breaks is not None and sent >= breaks:
                    raise Hangup  # the connection drops mid-stream
                if stalls is not None and sent == stalls:
                    self._sleep(self.hang_s)  # silence mid-stream; the client may give up
                if sent and self.chunk_delay_s:
                    self._sleep(self.chunk_delay_s)
                sent += 1
            h.write_chunk(frame)
        h.end_stream()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)


def _without_end(frames: list[tuple[bool, bytes]], api: Api,
                 what: Literal["end", "usage"]) -> list[tuple[bool, bytes]]:
    """A stream's frames without its end (see `FakeProvider.cut_stream_end`)."""
    if what == "end":
        last = max((i for i, (content, _) in enumerate(frames) if content), default=len(frames))
        return frames[: last + 1]
    if api == "anthropic":
        return [f for f in frames if not f[1].startswith(b"event: message_stop")]
    return [f for f in frames if b'"choices":[]' not in f[1]]  # the usage chunk has no choice


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m testkit.fake_provider",
        description="A fake OpenAI/Anthropic-compatible LLM server for tests and benchmarks.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--flavor", choices=FLAVORS, default="openai")
    p.add_argument("--tpm", type=int, default=None)
    p.add_argument("--rpm", type=int, default=None)
    p.add_argument("--burst-tokens", type=int, default=None)
    p.add_argument("--burst-requests", type=int, default=None)
    p.add_argument("--api-key", default=None)
    p.add_argument("--latency-s", type=float, default=0.0)
    p.add_argument("--chunk-chars", type=int, default=24)
    p.add_argument("--error-rate", type=float, default=0.0,
                   help="share of requests answered 500/503 (500/529 in the Anthropic style)")
    p.add_argument("--truncate-rate", type=float, default=0.0,
                   help="share of answered requests whose content is cut in the middle")
    p.add_argument("--seed", type=int, default=None, help="seed of the random faults")
    p.add_argument("--json-schema-unsupported", action="store_true",
                   help="answer response_format json_schema with a 400 (JSON mode still works)")
    p.add_argument("--ignore-instructions", action="store_true",
                   help="answer even a schema or a forced tool with JSON that fits no schema")
    p.add_argument("--rpd", type=int, default=None, help="requests per day")
    p.add_argument("--tpd", type=int, default=None, help="tokens per day")
    p.add_argument("--day-reset", default="UTC",
                   help="'rolling', or the time zone of the midnight the day resets at")
    p.add_argument("--limit-counts", choices=("actual", "reserved"), default="actual",
                   help="reserved: charge prompt + max_tokens at admission and never refund")
    p.add_argument("--no-prompt-cache", action="store_true",
                   help="report no cached input tokens (the prompt cache disabled)")
    a = p.parse_args(argv)
    try:
        fake = FakeProvider(
            flavor=a.flavor, tpm=a.tpm, rpm=a.rpm, burst_tokens=a.burst_tokens,
            burst_requests=a.burst_requests, api_key=a.api_key, latency_s=a.latency_s,
            port=a.port, host=a.host, chunk_chars=a.chunk_chars, error_rate=a.error_rate,
            truncate_rate=a.truncate_rate, seed=a.seed,
            json_schema_unsupported=a.json_schema_unsupported,
            ignore_instructions=a.ignore_instructions, rpd=a.rpd, tpd=a.tpd,
            day_reset=a.day_reset, limit_counts=a.limit_counts,
            prompt_cache=not a.no_prompt_cache,
        )
    except ValueError as exc:
        p.error(str(exc))
    return serve(fake)


def serve(fake: FakeProvider) -> int:
    """Serve `fake` as a process: print `READY <url>`, stop at SIGTERM or SIGINT."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    fake.start()
    print(f"READY {fake.url}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
