"""The half of an SDK adapter that does not depend on the API it speaks.

The `openai` and `anthropic` SDKs share one shape: a client with `max_retries` and a `Timeout`,
`with_raw_response.create(...)` for the response headers, one exception tree. `SDKProvider`
holds what follows from that, once:

* the constructor: the key from Settings, stripped (a placeholder when there is none, which
  also keeps the SDK from reading keys from the environment); one client per adapter, built
  once, `max_retries=0` (the router owns retries and fallback); connect 5 s, read/write/pool
  `timeout_s`.
* one request path, `_send`: the raw-response call and its headers, every failure mapped to a
  `masterplan.errors.ProviderError` by `classify.from_sdk_error`, with the key redacted.
* two ways of consuming the response, as in openai-python: `complete()` reads the whole of it,
  `stream()` iterates its events (a failure mid-stream is mapped too, and the stream is always
  closed). Both take the request id, the remaining capacity and, when the provider counted
  none, an estimated usage from the same place.

A subclass says only what its API says differently: `sdk` and `client_class`, `_endpoint` (the
SDK resource to create on), `_params` (the request), `_read` (a whole response's text and
`Reply` facts) and `_deltas` (a stream's text, noting its `Reply` facts as they arrive).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

from pydantic import SecretStr

from masterplan.errors import ProviderError
from masterplan.llm.base import Completion, LLMRequest, StreamEnd, StreamItem, Usage
from masterplan.llm.classify import from_sdk_error, request_id_from_headers
from masterplan.llm.wire import rate_limit_info

__all__ = ["CONNECT_TIMEOUT_S", "NO_KEY", "Reply", "SDKProvider"]

# Sent when no key is configured (local servers ignore it). Also keeps the SDK from reading
# OPENAI_API_KEY, ANTHROPIC_API_KEY, profiles or federation settings from the environment: keys
# come from Settings only.
NO_KEY = "not-needed"
CONNECT_TIMEOUT_S = 5.0


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

    def __init__(
        self,
        name: str,
        model: str,
        base_url: str | None,
        api_key: SecretStr | None,
        *,
        timeout_s: float = 60.0,
    ) -> None:
        self.name = name
        self.model = model
        self.base_url = base_url
        self.timeout_s = timeout_s
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

    def _send(self, request: LLMRequest, *, stream: bool) -> tuple[Mapping[str, str], Any]:
        """Make the call: its response headers, and the parsed response or the event stream."""
        try:
            raw = self._endpoint().with_raw_response.create(**self._params(request, stream=stream))
            return raw.headers, raw.parse()
        except Exception as exc:
            raise self._error(exc) from exc

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
        """Text pieces, then one `StreamEnd`. Failures, mid-stream too, are `ProviderError`s."""
        headers, events = self._send(request, stream=True)
        reply = Reply()
        chars = 0
        try:
            try:
                for piece in self._deltas(events, request, reply):
                    chars += len(piece)
                    yield piece
            except ProviderError:
                raise
            except Exception as exc:
                raise self._error(exc) from exc
        finally:
            events.close()
        yield self._end(request, headers, reply, chars)

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()
