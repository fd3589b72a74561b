"""The adapter for every OpenAI-compatible chat-completions endpoint.

One class serves OpenAI, Google AI Studio (`https://generativelanguage.googleapis.com/v1beta/
openai/`), Groq (`https://api.groq.com/openai/v1`), Azure-style gateways and local servers
(Ollama, vLLM). Differences between them are settings, not code: `base_url`, `model`, the key
(None for a local server), `structured_output` and `strict`.

* Structured output (the schema is also in the system prompt, `json_instructions`), by mode:
  `json_schema` sends `response_format: {"type": "json_schema", ...}` with the schema in its
  strict form (`structured.strict_schema`) and `strict: true` where the server enforces it;
  `json_object` asks the server for syntax only; `prompt` sends no response_format. A 400
  refusing the mode is `ModeUnsupported` (sdk.py), and the router degrades. The adapter does
  not validate the JSON: the router does, and raises `InvalidOutput`.
* The client, the key, the request path, the raw response and the error mapping (mid-stream
  too) are `masterplan.llm.sdk.SDKProvider`'s; this module says what to send and how to read a
  completion and its chunks. A server that reports no usage gets an estimate there.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any, ClassVar

import openai
from pydantic import SecretStr

from masterplan.errors import ServerError
from masterplan.llm.base import LLMRequest, Usage
from masterplan.llm.sdk import Reply, SDKProvider
from masterplan.llm.structured import strict_schema
from masterplan.settings import StructuredOutput

__all__ = ["OpenAICompatProvider"]


def _usage(usage: Any) -> Usage | None:
    """The usage, with `prompt_tokens_details.cached_tokens` (OpenAI, Gemini, Groq: the part of
    `prompt_tokens` read from the implicit prefix cache; absent where a server has none)."""
    if usage is None:
        return None
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) or 0
    return Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0, cached_input_tokens=cached)


class OpenAICompatProvider(SDKProvider):
    """A `Provider` over an OpenAI-compatible `/chat/completions` endpoint."""

    sdk: ClassVar[ModuleType] = openai
    client_class = openai.OpenAI
    modes: ClassVar[tuple[StructuredOutput, ...]] = ("json_schema", "json_object", "prompt")

    def __init__(self, name: str, model: str, base_url: str | None, api_key: SecretStr | None, *,
                 timeout_s: float = 60.0, first_token_s: float | None = None,
                 stall_s: float | None = None, structured_output: StructuredOutput | None = None,
                 strict: bool = False) -> None:
        self.strict = strict
        super().__init__(name, model, base_url, api_key, timeout_s=timeout_s,
                         first_token_s=first_token_s, stall_s=stall_s,
                         structured_output=structured_output)
        if base_url is not None:
            # OPENAI_ORG_ID / OPENAI_PROJECT_ID from the environment are OpenAI's; do not send
            # them to Google, Groq or a local server.
            self._client.organization = None
            self._client.project = None

    def _endpoint(self) -> Any:
        return self._client.chat.completions

    def _params(self, request: LLMRequest, *, stream: bool) -> dict[str, Any]:
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
        mode = self.mode_of(request)
        if request.schema is not None and mode == "json_schema":
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": request.schema.__name__,
                    "schema": strict_schema(request.schema),
                    "strict": self.strict,
                },
            }
        elif mode == "json_object":
            params["response_format"] = {"type": "json_object"}
        if stream:
            params["stream"] = True
            params["stream_options"] = {"include_usage": True}
        return params

    def _read(self, response: Any, request: LLMRequest) -> tuple[str, Reply]:
        text = ""
        if response.choices:
            text = response.choices[0].message.content or ""
        return text, Reply(_usage(response.usage), response.model, response.id)

    def _deltas(self, chunks: Any, request: LLMRequest, reply: Reply) -> Iterator[str]:
        """The first choice's content. A stream is whole only with its end: a chunk with the
        first choice's `finish_reason`, and the usage (`stream_options.include_usage` is always
        asked for, and comes in the last chunk); without either it was cut: `ServerError`."""
        finished = False
        for chunk in chunks:
            reply.response_id = reply.response_id or chunk.id or None
            reply.model = chunk.model or reply.model
            reply.usage = _usage(chunk.usage) or reply.usage
            for choice in chunk.choices:
                if choice.index != 0:
                    continue
                finished = finished or bool(choice.finish_reason)
                if choice.delta is not None and choice.delta.content:
                    yield choice.delta.content
        if not finished:
            raise ServerError(f"{self.name}: the stream ended without its final chunk "
                              "(no finish_reason)", provider=self.name)
        if reply.usage is None:
            raise ServerError(f"{self.name}: the stream ended without its usage (asked for with "
                              "stream_options.include_usage)", provider=self.name)
