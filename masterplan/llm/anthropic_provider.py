"""The adapter for Anthropic's Messages API.

Structured output is obtained by FORCED TOOL USE. When the request has a schema, the request
declares one tool whose `input_schema` is the schema's JSON schema and sets
`tool_choice={"type": "tool", "name": <schema name>}`. The model must then answer with a
`tool_use` block whose `input` is an already-parsed JSON object shaped by `input_schema`; the
completion's text is `json.dumps(block.input)`. The alternative, prefilling the assistant turn
with `{`, is unsupported on newer Claude models (a 400) and even where it works yields free
text that may not parse. The schema also stays in the system prompt (`json_instructions`), and
the router still validates the result.

* One `anthropic.Anthropic` client per adapter, built once, `max_retries=0` (the router owns
  retries and fallback), an explicit timeout: connect 5 s, read/write/pool `timeout_s`.
* `complete()` and `stream()` share one request builder, `_params()`.
* `temperature` is not sent: this SDK's Messages API has no such parameter.
* Every failure leaves as a `masterplan.errors.ProviderError` from
  `classify.from_anthropic_error`, during a stream's iteration as well (an `event: error` in
  the stream, or the connection dropping).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
from pydantic import BaseModel, SecretStr

from masterplan.errors import ProviderError
from masterplan.llm.base import Completion, LLMRequest, StreamEnd, StreamItem, Usage
from masterplan.llm.classify import from_anthropic_error, request_id_from_headers
from masterplan.llm.wire import rate_limit_info

__all__ = ["NO_KEY", "AnthropicProvider", "tool_for"]

# Sent when no key is configured (an Anthropic-compatible local server). Also keeps the SDK from
# reading keys, profiles or federation settings from the environment: keys come from Settings.
NO_KEY = "not-needed"
CONNECT_TIMEOUT_S = 5.0


def _key(api_key: SecretStr | str | None) -> str:
    if api_key is None:
        return NO_KEY
    raw = api_key.get_secret_value() if isinstance(api_key, SecretStr) else str(api_key)
    return raw.strip() or NO_KEY


def tool_for(schema: type[BaseModel]) -> dict[str, Any]:
    """The tool definition that carries `schema` (its name is the schema's class name)."""
    doc = " ".join((schema.__doc__ or "").split())
    description = f"Record the answer as one {schema.__name__} object."
    if doc:
        description += f" {doc}"
    return {
        "name": schema.__name__,
        "description": description,
        "input_schema": schema.model_json_schema(),
    }


def _input_tokens(usage: Any) -> int:
    """Input tokens including cache writes and reads: all of them count against limits."""
    total = 0
    for field in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
        total += getattr(usage, field, None) or 0
    return total


class AnthropicProvider:
    """A `Provider` over Anthropic's `/v1/messages`."""

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
        self._client = anthropic.Anthropic(
            api_key=self._secret,
            base_url=base_url,
            max_retries=0,
            timeout=anthropic.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
        )

    def __repr__(self) -> str:
        return f"AnthropicProvider(name={self.name!r}, model={self.model!r})"

    # -- request -----------------------------------------------------------------------------

    def _params(self, request: LLMRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        if request.system:
            params["system"] = request.system
        if request.schema is not None:
            params["tools"] = [tool_for(request.schema)]
            params["tool_choice"] = {"type": "tool", "name": request.schema.__name__}
        return params

    def _error(self, exc: BaseException) -> ProviderError:
        return from_anthropic_error(exc, self.name, secrets=(self._secret,))

    # -- complete ----------------------------------------------------------------------------

    def complete(self, request: LLMRequest) -> Completion:
        started = time.perf_counter()
        try:
            raw = self._client.messages.with_raw_response.create(**self._params(request))
            message = raw.parse()
        except Exception as exc:
            raise self._error(exc) from exc
        latency_ms = int((time.perf_counter() - started) * 1000)

        text = self._text(message, request)
        usage = Usage(
            input_tokens=_input_tokens(message.usage),
            output_tokens=message.usage.output_tokens or 0,
        )
        return Completion(
            text=text,
            usage=usage,
            provider=self.name,
            model=message.model or self.model,
            latency_ms=latency_ms,
            request_id=request_id_from_headers(raw.headers) or message.id or None,
            rate_limit=rate_limit_info(raw.headers),
        )

    @staticmethod
    def _text(message: Any, request: LLMRequest) -> str:
        """The tool's input as JSON when a schema was asked for; otherwise the text blocks.

        With a schema but no matching tool_use block (a model that ignored tool_choice) the text
        blocks are returned and the router's validation decides.
        """
        if request.schema is not None:
            for block in message.content:
                if block.type == "tool_use" and block.name == request.schema.__name__:
                    return json.dumps(block.input)
        return "".join(block.text for block in message.content if block.type == "text")

    # -- stream ------------------------------------------------------------------------------

    def stream(self, request: LLMRequest) -> Iterator[StreamItem]:
        """Text deltas (with a schema: the tool input's partial JSON), then one `StreamEnd`."""
        try:
            raw = self._client.messages.with_raw_response.create(
                **self._params(request), stream=True
            )
            events = raw.parse()
        except Exception as exc:
            raise self._error(exc) from exc

        headers = raw.headers
        want_tool = request.schema.__name__ if request.schema is not None else None
        wanted_blocks: set[int] = set()
        model = self.model
        message_id: str | None = None
        input_tokens = 0
        output_tokens = 0
        try:
            try:
                for event in events:
                    kind = event.type
                    if kind == "message_start":
                        message_id = event.message.id or None
                        model = event.message.model or model
                        input_tokens = _input_tokens(event.message.usage)
                        output_tokens = event.message.usage.output_tokens or 0
                    elif kind == "content_block_start":
                        block = event.content_block
                        if want_tool is None and block.type == "text":
                            wanted_blocks.add(event.index)
                            if block.text:
                                yield block.text
                        elif (
                            want_tool is not None
                            and block.type == "tool_use"
                            and block.name == want_tool
                        ):
                            wanted_blocks.add(event.index)
                    elif kind == "content_block_delta":
                        if event.index not in wanted_blocks:
                            continue
                        delta = event.delta
                        if delta.type == "text_delta" and delta.text:
                            yield delta.text
                        elif delta.type == "input_json_delta" and delta.partial_json:
                            yield delta.partial_json
                    elif kind == "message_delta":
                        # message_delta usage is cumulative
                        output_tokens = event.usage.output_tokens or output_tokens
                        if event.usage.input_tokens is not None:
                            input_tokens = _input_tokens(event.usage)
            except ProviderError:
                raise
            except Exception as exc:
                raise self._error(exc) from exc
        finally:
            events.close()

        yield StreamEnd(
            usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            provider=self.name,
            model=model,
            request_id=request_id_from_headers(headers) or message_id,
            rate_limit=rate_limit_info(headers),
        )

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()
