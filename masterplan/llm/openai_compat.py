"""The adapter for every OpenAI-compatible chat-completions endpoint.

One class serves OpenAI, Google AI Studio (`https://generativelanguage.googleapis.com/v1beta/
openai/`), Groq (`https://api.groq.com/openai/v1`), Azure-style gateways and local servers
(Ollama, vLLM). Differences between them are settings, not code: `base_url`, `model`, the key
(None for a local server) and `json_mode`.

* One `openai.OpenAI` client per adapter, built once, `max_retries=0` (the router owns retries
  and fallback), an explicit timeout: connect 5 s, read/write/pool `timeout_s`.
* `complete()` and `stream()` share one request builder, `_params()`.
* JSON output: the schema is already in the system prompt (`json_instructions`); `json_mode`
  only asks the server to guarantee syntax. The adapter does not validate the JSON: the router
  does, and raises `InvalidOutput`.
* Every failure leaves as a `masterplan.errors.ProviderError` from `classify.from_openai_error`,
  during a stream's iteration as well.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
from pydantic import SecretStr

from masterplan.errors import ProviderError
from masterplan.llm.base import Completion, LLMRequest, StreamEnd, StreamItem, Usage
from masterplan.llm.classify import from_openai_error, request_id_from_headers
from masterplan.llm.wire import rate_limit_info

__all__ = ["JSON_MODES", "NO_KEY", "OpenAICompatProvider"]

# Sent when no key is configured (local servers ignore it). Also keeps the SDK from reading
# OPENAI_API_KEY from the environment: keys come from Settings only.
NO_KEY = "not-needed"
CONNECT_TIMEOUT_S = 5.0
# "json_object": response_format {"type": "json_object"} (OpenAI, Gemini, Groq, vLLM, Ollama).
# "json_schema": response_format {"type": "json_schema", ...} with the schema, not strict.
# "none": no response_format, for servers that reject it; the prompt alone asks for JSON.
JSON_MODES = ("json_object", "json_schema", "none")


def _key(api_key: SecretStr | str | None) -> str:
    if api_key is None:
        return NO_KEY
    raw = api_key.get_secret_value() if isinstance(api_key, SecretStr) else str(api_key)
    return raw.strip() or NO_KEY


def _estimate_tokens(chars: int) -> int:
    return max(1, (chars + 3) // 4)


class OpenAICompatProvider:
    """A `Provider` over an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(
        self,
        name: str,
        model: str,
        base_url: str | None,
        api_key: SecretStr | None,
        *,
        timeout_s: float = 60.0,
        json_mode: str = "json_object",
    ) -> None:
        if json_mode not in JSON_MODES:
            raise ValueError(f"json_mode must be one of {', '.join(JSON_MODES)}, not {json_mode!r}")
        self.name = name
        self.model = model
        self.base_url = base_url
        self.json_mode = json_mode
        self.timeout_s = timeout_s
        self._secret = _key(api_key)
        self._client = openai.OpenAI(
            api_key=self._secret,
            base_url=base_url,
            max_retries=0,
            timeout=openai.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
        )
        if base_url is not None:
            # OPENAI_ORG_ID / OPENAI_PROJECT_ID from the environment are OpenAI's; do not send
            # them to Google, Groq or a local server.
            self._client.organization = None
            self._client.project = None

    def __repr__(self) -> str:
        return f"OpenAICompatProvider(name={self.name!r}, model={self.model!r})"

    # -- request -----------------------------------------------------------------------------

    def _params(self, request: LLMRequest, stream: bool) -> dict[str, Any]:
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend({"role": m.role, "content": m.content} for m in request.messages)
        params: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.schema is not None:
            if self.json_mode == "json_object":
                params["response_format"] = {"type": "json_object"}
            elif self.json_mode == "json_schema":
                params["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": request.schema.__name__,
                        "schema": request.schema.model_json_schema(),
                        "strict": False,
                    },
                }
        if stream:
            params["stream"] = True
            params["stream_options"] = {"include_usage": True}
        return params

    def _error(self, exc: BaseException) -> ProviderError:
        return from_openai_error(exc, self.name, secrets=(self._secret,))

    # -- complete ----------------------------------------------------------------------------

    def complete(self, request: LLMRequest) -> Completion:
        started = time.perf_counter()
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                **self._params(request, stream=False)
            )
            response = raw.parse()
        except Exception as exc:
            raise self._error(exc) from exc
        latency_ms = int((time.perf_counter() - started) * 1000)

        text = ""
        if response.choices:
            text = response.choices[0].message.content or ""
        if response.usage is not None:
            usage = Usage(
                input_tokens=response.usage.prompt_tokens or 0,
                output_tokens=response.usage.completion_tokens or 0,
            )
        else:  # some local servers omit usage; an estimate keeps cost and limits honest
            usage = Usage(_estimate_tokens(request.prompt_chars), _estimate_tokens(len(text)))
        return Completion(
            text=text,
            usage=usage,
            provider=self.name,
            model=response.model or self.model,
            latency_ms=latency_ms,
            request_id=request_id_from_headers(raw.headers) or response.id or None,
            rate_limit=rate_limit_info(raw.headers),
        )

    # -- stream ------------------------------------------------------------------------------

    def stream(self, request: LLMRequest) -> Iterator[StreamItem]:
        """Text deltas, then one `StreamEnd`. Errors (also mid-stream) are `ProviderError`s."""
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                **self._params(request, stream=True)
            )
            chunks = raw.parse()
        except Exception as exc:
            raise self._error(exc) from exc

        headers = raw.headers
        model = self.model
        chunk_id: str | None = None
        usage: Usage | None = None
        chars = 0
        try:
            try:
                for chunk in chunks:
                    chunk_id = chunk_id or chunk.id or None
                    model = chunk.model or model
                    if chunk.usage is not None:
                        usage = Usage(
                            input_tokens=chunk.usage.prompt_tokens or 0,
                            output_tokens=chunk.usage.completion_tokens or 0,
                        )
                    for choice in chunk.choices:
                        if choice.index == 0 and choice.delta is not None:
                            piece = choice.delta.content
                            if piece:
                                chars += len(piece)
                                yield piece
            except ProviderError:
                raise
            except Exception as exc:
                raise self._error(exc) from exc
        finally:
            chunks.close()

        if usage is None:
            usage = Usage(_estimate_tokens(request.prompt_chars), _estimate_tokens(chars))
        yield StreamEnd(
            usage=usage,
            provider=self.name,
            model=model,
            request_id=request_id_from_headers(headers) or chunk_id,
            rate_limit=rate_limit_info(headers),
        )

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()
