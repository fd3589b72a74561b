"""The half of an SDK adapter that does not depend on the API it speaks.

The `openai` and `anthropic` SDKs share one shape: a client with `max_retries` and a `Timeout`,
`with_raw_response.create(...)` for the response headers, one exception tree. `SDKProvider`
holds what follows from that, once:

* the constructor: the key from Settings, stripped (a placeholder when there is none, which
  also keeps the SDK from reading keys from the environment); one client per adapter, built
  once, `max_retries=0` (the router owns retries and fallback); connect 5 s, read/write/pool
  `timeout_s`.
* one request path, `_send`: the raw-response call and its headers, every failure mapped to a
  `masterplan.errors.ProviderError` by `classify.from_sdk_error`, with the key redacted, then
  refined by what was sent (a 400 refusing its structured-output mode is `ModeUnsupported`).
* two ways of consuming the response, as in openai-python: `complete()` reads the whole of it,
  `stream()` iterates its events (a failure mid-stream is mapped too, and the stream is always
  closed). Both take the request id, the remaining capacity and, when the provider counted
  none, an estimated usage from the same place.

The router streams every call, so that silence is seen early. A stream's time limits, all
`ProviderTimeout` (transient, towards the circuit), each saying which one struck and when:

* first token (`first_token_s`, LLM_FIRST_TOKEN_TIMEOUT_S): the reply must begin (its status
  line and headers: a silent provider sends nothing at all) within it. It is the socket read
  timeout of the request until the response's headers are in;
* stall (`stall_s`, LLM_STALL_TIMEOUT_S): then no gap between two reads of the stream (its
  events, keep-alive pings included) may pass it. The same read timeout, switched on the
  request before its body is read (httpcore reads it when the body's first read starts);
* the whole call (`timeout_s`, LLM_TIMEOUT_S), checked at each event: a stream that trickles
  forever is cut too, so a call still ends before the task's time limits.

A stream that ends without its API's end (`_deltas` raises `ServerError`) failed, whatever
text it carried: a cut reply is never taken for a whole one.

A subclass says only what its API says differently: `sdk` and `client_class`, `_endpoint` (the
SDK resource to create on), `_params` (the request), `_read` (a whole response's text and
`Reply` facts) and `_deltas` (a stream's text, noting its `Reply` facts as they arrive). Each
has a `structured_output` mode, the default of a request that names none.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

from pydantic import SecretStr

from masterplan.errors import ProviderError, ProviderTimeout
from masterplan.llm.base import Completion, LLMRequest, StreamEnd, StreamItem, Usage
from masterplan.llm.classify import from_sdk_error, request_id_from_headers
from masterplan.llm.structured import refused_mode
from masterplan.llm.wire import rate_limit_info
from masterplan.settings import StructuredOutput

__all__ = ["CONNECT_TIMEOUT_S", "FIRST_TOKEN_TIMEOUT_S", "NO_KEY", "STALL_TIMEOUT_S", "Reply",
           "SDKProvider"]

# Sent when no key is configured (local servers ignore it). Also keeps the SDK from reading
# OPENAI_API_KEY, ANTHROPIC_API_KEY, profiles or federation settings from the environment: keys
# come from Settings only.
NO_KEY = "not-needed"
CONNECT_TIMEOUT_S = 5.0
# The settings' defaults (LLM_FIRST_TOKEN_TIMEOUT_S, LLM_STALL_TIMEOUT_S), for adapters built alone.
FIRST_TOKEN_TIMEOUT_S = 10.0
STALL_TIMEOUT_S = 15.0


def _read_timed_out(exc: BaseException) -> bool:
    """A socket read timed out somewhere in `exc`'s causes (the SDKs wrap httpx's `ReadTimeout`,
    httpx2's or httpcore's alike, in their `APITimeoutError`), not the connect or pool timeout."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if type(seen).__name__ == "ReadTimeout":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _key(api_key: SecretStr | str | None) -> str:
    if api_key is None:
        return NO_KEY
    raw = api_key.get_secret_value() if isinstance(api_key, SecretStr) else str(api_key)
    return raw.strip() or NO_KEY


@dataclass(slots=True)
class Reply:
    """What a response says besides its text. None: it did not say (usage is then estimated,
    the model is the configured one)."""

    usage: Usage | None = None
    model: str | None = None
    response_id: str | None = None


class SDKProvider(ABC):
    """A `Provider` over one of the two SDKs; see the module docstring for the split."""

    # The SDK module (its `Timeout` and exception tree) and its synchronous client class.
    sdk: ClassVar[ModuleType]
    client_class: ClassVar[type[Any]]
    # The modes this API can send, the first its default (masterplan/llm/structured.py).
    modes: ClassVar[tuple[StructuredOutput, ...]]

    def __init__(
        self,
        name: str,
        model: str,
        base_url: str | None,
        api_key: SecretStr | None,
        *,
        timeout_s: float = 60.0,
        first_token_s: float | None = None,
        stall_s: float | None = None,
        structured_output: StructuredOutput | None = None,
    ) -> None:
        structured_output = structured_output or self.modes[0]
        if structured_output not in self.modes:
            raise ValueError(f"structured_output must be one of {', '.join(self.modes)}, "
                             f"not {structured_output!r}")
        self.structured_output: StructuredOutput = structured_output
        self.name = name
        self.model = model
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.first_token_s = min(first_token_s or FIRST_TOKEN_TIMEOUT_S, timeout_s)
        self.stall_s = min(stall_s or STALL_TIMEOUT_S, timeout_s)
        self._secret = _key(api_key)
        self._client = self.client_class(
            api_key=self._secret,
            base_url=base_url,
            max_retries=0,
            timeout=self.sdk.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r})"

    # -- what each API says differently ----------------------------------------------------

    @abstractmethod
    def _endpoint(self) -> Any:
        """The SDK resource whose `with_raw_response.create(**params)` makes the call."""

    @abstractmethod
    def _params(self, request: LLMRequest, *, stream: bool) -> dict[str, Any]:
        """The request, streamed or not: the one request builder of `complete` and `stream`."""

    @abstractmethod
    def _read(self, response: Any, request: LLMRequest) -> tuple[str, Reply]:
        """A whole response's text and facts."""

    @abstractmethod
    def _deltas(self, events: Any, request: LLMRequest, reply: Reply) -> Iterator[str]:
        """A stream's text pieces, noting its facts in `reply` as they arrive."""

    # -- the request path ------------------------------------------------------------------

    def _error(self, exc: BaseException) -> ProviderError:
        return from_sdk_error(self.sdk, exc, self.name, secrets=(self._secret,))

    def mode_of(self, request: LLMRequest) -> StructuredOutput | None:
        """How this request's schema is asked for; None: it has no schema."""
        if request.schema is None:
            return None
        mode = request.structured_output or self.structured_output
        # A degraded mode this API cannot send (a `tool` provider never degrades) is the prompt.
        return mode if mode in self.modes else "prompt"

    def _send(self, request: LLMRequest, *, stream: bool) -> tuple[Mapping[str, str], Any]:
        """Make the call: its response headers, and the parsed response or the event stream
        (a stream's headers within the first-token timeout, its reads then within the stall
        timeout)."""
        started = time.perf_counter()
        options: dict[str, Any] = {}
        if stream:
            options["timeout"] = self.sdk.Timeout(
                self.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.timeout_s),
                read=self.first_token_s)
        try:
            raw = self._endpoint().with_raw_response.create(
                **self._params(request, stream=stream), **options)
            if stream:
                # Read when the body's first read starts, i.e. after this: the stall timeout.
                extensions = raw.http_response.request.extensions
                extensions["timeout"] = {**extensions.get("timeout", {}), "read": self.stall_s}
            return raw.headers, raw.parse()
        except Exception as exc:
            err = refused_mode(self._error(exc), self.mode_of(request))
            if stream and isinstance(err, ProviderTimeout) and _read_timed_out(exc):
                err = ProviderTimeout(
                    f"{self.name}: no reply within the first-token timeout "
                    f"({self.first_token_s:g} s): silent for {time.perf_counter() - started:.1f} s",
                    provider=self.name)
            raise err from exc

    def _end(self, request: LLMRequest, headers: Mapping[str, str], reply: Reply,
             text_chars: int) -> StreamEnd:
        return StreamEnd(
            usage=reply.usage or Usage.estimated(request, text_chars),
            provider=self.name,
            model=reply.model or self.model,
            request_id=request_id_from_headers(headers) or reply.response_id or None,
            rate_limit=rate_limit_info(headers),
        )

    # -- the two ways of consuming it ------------------------------------------------------

    def complete(self, request: LLMRequest) -> Completion:
        """The whole reply. The adapter does not validate JSON: the router does."""
        started = time.perf_counter()
        headers, response = self._send(request, stream=False)
        latency_ms = int((time.perf_counter() - started) * 1000)
        text, reply = self._read(response, request)
        return Completion.of(text, self._end(request, headers, reply, len(text)), latency_ms)

    def stream(self, request: LLMRequest) -> Iterator[StreamItem]:
        """Text pieces, then one `StreamEnd`. Failures, mid-stream too, are `ProviderError`s;
        the time limits are the module docstring's."""
        started = time.perf_counter()
        headers, events = self._send(request, stream=True)
        reply = Reply()
        chars = pieces = 0
        try:
            try:
                for piece in self._deltas(events, request, reply):
                    chars, pieces = chars + len(piece), pieces + 1
                    if time.perf_counter() - started > self.timeout_s:
                        raise ProviderTimeout(
                            f"{self.name}: the stream ran past the call's timeout "
                            f"({self.timeout_s:g} s) after {pieces} chunks", provider=self.name)
                    yield piece
            except ProviderError:
                raise
            except Exception as exc:
                if not _read_timed_out(exc):
                    raise self._error(exc) from exc
                raise ProviderTimeout(
                    f"{self.name}: the stream stalled: nothing for the stall timeout "
                    f"({self.stall_s:g} s) after {pieces} chunks, "
                    f"{time.perf_counter() - started:.1f} s into the call",
                    provider=self.name) from exc
        finally:
            events.close()
        yield self._end(request, headers, reply, chars)

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()
