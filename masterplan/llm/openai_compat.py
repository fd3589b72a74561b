"""The adapter for every OpenAI-compatible chat-completions endpoint.

One class serves OpenAI, Google AI Studio (`https://generativelanguage.googleapis.com/v1beta/
openai/`), Groq (`https://api.groq.com/openai/v1`), Azure-style gateways and local servers
(Ollama, vLLM). Differences between them are settings, not code: `base_url`, `model`, the key
(None for a local server) and `json_mode`.

* JSON output: the schema is already in the system prompt (`json_instructions`); `json_mode`
  only asks the server to guarantee syntax. The adapter does not validate the JSON: the router
  does, and raises `InvalidOutput`.
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

from masterplan.llm.base import LLMRequest, Usage
from masterplan.llm.sdk import Reply, SDKProvider

__all__ = ["JSON_MODES", "OpenAICompatProvider"]

# "json_object": response_format {"type": "json_object"} (OpenAI, Gemini, Groq, vLLM, Ollama).
# "json_schema": response_format {"type": "json_schema", ...} with the schema, not strict.
# "none": no response_format, for servers that reject it; the prompt alone asks for JSON.
JSON_MODES = ("json_object", "json_schema", "none")


def _usage(usage: Any) -> Usage | None:
    if usage is None:
        return None
    return Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0)


class OpenAICompatProvider(SDKProvider):
    """A `Provider` over an OpenAI-compatible `/chat/completions` endpoint."""

    sdk: ClassVar[ModuleType] = openai
    client_class = openai.OpenAI

    def __init__(self, name: str, model: str, base_url: str | None, api_key: SecretStr | None, *,
                 timeout_s: float = 60.0, json_mode: str = "json_object") -> None:
        if json_mode not in JSON_MODES:
            raise ValueError(f"json_mode must be one of {', '.join(JSON_MODES)}, not {json_mode!r}")
        self.json_mode = json_mode
        super().__init__(name, model, base_url, api_key, timeout_s=timeout_s)
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

    def _read(self, response: Any, request: LLMRequest) -> tuple[str, Reply]:
        text = ""
        if response.choices:
            text = response.choices[0].message.content or ""
        return text, Reply(_usage(response.usage), response.model, response.id)

    def _deltas(self, chunks: Any, request: LLMRequest, reply: Reply) -> Iterator[str]:
        for chunk in chunks:
            reply.response_id = reply.response_id or chunk.id or None
            reply.model = chunk.model or reply.model
            reply.usage = _usage(chunk.usage) or reply.usage
            for choice in chunk.choices:
                if choice.index == 0 and choice.delta is not None and choice.delta.content:
                    yield choice.delta.content
