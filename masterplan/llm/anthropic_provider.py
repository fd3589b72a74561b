"""The adapter for Anthropic's Messages API.

Structured output is obtained by FORCED TOOL USE. When the request has a schema, the request
declares one tool whose `input_schema` is the schema's JSON schema and sets
`tool_choice={"type": "tool", "name": <schema name>}`. The model must then answer with a
`tool_use` block whose `input` is an already-parsed JSON object shaped by `input_schema`; the
completion's text is `json.dumps(block.input)`. The alternative, prefilling the assistant turn
with `{`, is unsupported on newer Claude models (a 400) and even where it works yields free
text that may not parse. The schema also stays in the system prompt (`json_instructions`), and
the router still validates the result. `structured_output="prompt"` sends no tool: the schema
is then in the system prompt only.

The client, the key, the request path, the raw response and the error mapping (an `event:
error` in a stream and a dropped connection included) are `masterplan.llm.sdk.SDKProvider`'s;
this module says what to send and how to read a message and its stream events.
`temperature` is not sent: this SDK's Messages API has no such parameter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any, ClassVar

import anthropic
from pydantic import BaseModel

from masterplan.errors import ServerError
from masterplan.llm.base import LLMRequest, Usage
from masterplan.llm.sdk import Reply, SDKProvider
from masterplan.settings import StructuredOutput

__all__ = ["AnthropicProvider", "tool_for"]


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


def _usage(usage: Any, before: Usage | None = None) -> Usage:
    """Anthropic's usage in `Usage`'s convention: `input_tokens` there excludes the cache's
    reads and writes (`cache_read_input_tokens`, `cache_creation_input_tokens`), which are
    added to it here (all of them count against limits) and kept apart for pricing. A field it
    does not carry (a stream's message_delta may omit them: its usage is cumulative) keeps its
    value from `before`."""
    before = before or Usage()

    def field(name: str) -> int | None:
        value = getattr(usage, name, None)
        return None if value is None else int(value)

    fresh = field("input_tokens")
    read = field("cache_read_input_tokens")
    written = field("cache_creation_input_tokens")
    cached = before.cached_input_tokens if read is None else read
    writes = before.cache_write_tokens if written is None else written
    if fresh is None:
        total = max(before.input_tokens, cached + writes)
    else:
        total = fresh + cached + writes
    return Usage(total, field("output_tokens") or before.output_tokens,
                 cached_input_tokens=cached, cache_write_tokens=writes)


class AnthropicProvider(SDKProvider):
    """A `Provider` over Anthropic's `/v1/messages`."""

    sdk: ClassVar[ModuleType] = anthropic
    client_class = anthropic.Anthropic
    modes: ClassVar[tuple[StructuredOutput, ...]] = ("tool", "prompt")

    def _endpoint(self) -> Any:
        return self._client.messages

    def _params(self, request: LLMRequest, *, stream: bool) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        if request.system and request.cache_system:
            # A shared prefix: cached for 5 minutes, read back at a tenth of the input price by
            # the job's other personas (tools, then system: the same for all of them).
            params["system"] = [{"type": "text", "text": request.system,
                                 "cache_control": {"type": "ephemeral"}}]
        elif request.system:
            params["system"] = request.system
        if request.schema is not None and self.mode_of(request) == "tool":
            params["tools"] = [tool_for(request.schema)]
            params["tool_choice"] = {"type": "tool", "name": request.schema.__name__}
        if stream:
            params["stream"] = True
        return params

    def _read(self, message: Any, request: LLMRequest) -> tuple[str, Reply]:
        """The tool's input as JSON when a schema was asked for; otherwise the text blocks.

        With a schema but no matching tool_use block (a model that ignored tool_choice) the text
        blocks are returned and the router's validation decides.
        """
        usage = _usage(message.usage)
        reply = Reply(usage, message.model, message.id)
        if request.schema is not None and self.mode_of(request) == "tool":
            for block in message.content:
                if block.type == "tool_use" and block.name == request.schema.__name__:
                    return json.dumps(block.input), reply
        return "".join(block.text for block in message.content if block.type == "text"), reply

    def _deltas(self, events: Any, request: LLMRequest, reply: Reply) -> Iterator[str]:
        """Text deltas (with a schema: the tool input's partial JSON). A stream is whole only
        with its `message_stop`; without it it was cut: `ServerError`."""
        tool = request.schema is not None and self.mode_of(request) == "tool"
        want_tool = request.schema.__name__ if tool and request.schema is not None else None
        wanted_blocks: set[int] = set()
        stopped = False
        for event in events:
            kind = event.type
            if kind == "message_stop":
                stopped = True
            elif kind == "message_start":
                reply.response_id = event.message.id or None
                reply.model = event.message.model or None
                reply.usage = _usage(event.message.usage)
            elif kind == "content_block_start":
                block = event.content_block
                if want_tool is None and block.type == "text":
                    wanted_blocks.add(event.index)
                    if block.text:
                        yield block.text
                elif want_tool is not None and block.type == "tool_use" and block.name == want_tool:
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
                reply.usage = _usage(event.usage, reply.usage)
        if not stopped:
            raise ServerError(f"{self.name}: the stream ended without its message_stop",
                              provider=self.name)
