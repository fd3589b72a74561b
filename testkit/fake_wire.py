"""Wire formats of the fake provider: request parsing, the responder, reply bodies and stream
events of the OpenAI Chat Completions and Anthropic Messages APIs.

Pure functions, no I/O; `fake_provider` puts them on a socket (errors and rate-limit headers
are in `fake_limits`).
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import jiter

Api = Literal["openai", "anthropic"]
Flavor = Literal["openai", "groq", "gemini", "anthropic"]
FLAVORS: tuple[str, ...] = ("openai", "groq", "gemini", "anthropic")

_SCHEMA = re.compile(r"Schema name: (\w+)")
_IDEA = re.compile(r"Startup idea:\n(.+?)(?:\n\n|$)", re.DOTALL)


def tokens_of(chars: int) -> int:
    """About four characters a token, rounded up."""
    return math.ceil(chars / 4) if chars > 0 else 0


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


# ---------------------------------------------------------------- requests


@dataclass(slots=True)
class FakePrompt:
    """What a responder sees of one request, whichever API it came through."""

    api: Api
    model: str
    system: str
    messages: list[tuple[str, str]]  # (role, text)
    max_tokens: int | None
    stream: bool
    # "json_object" (OpenAI JSON mode or json_schema), "tool" (Anthropic forced tool) or None.
    json_mode: str | None = None
    tool_name: str | None = None
    schema_name: str | None = None  # from a "Schema name: X" line in the system prompt
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def user_text(self) -> str:
        return "\n".join(text for role, text in self.messages if role == "user")

    @property
    def input_chars(self) -> int:
        return len(self.system) + sum(len(text) for _, text in self.messages)

    @property
    def wants_json(self) -> bool:
        return self.json_mode is not None or self.schema_name is not None


# A responder returns the reply text, or a JSON object (sent as text in JSON mode, as the tool
# input for forced tool use).
Responder = Callable[[FakePrompt], "str | dict[str, Any]"]


def _text_of(content: Any) -> str:
    """The text of a message `content`: a string or a list of typed parts / blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out: list[str] = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    out.append(part["text"])
                elif part.get("type") == "tool_use":
                    out.append(json.dumps(part.get("input", {})))
                elif part.get("type") == "tool_result":
                    out.append(_text_of(part.get("content")))
        return "".join(out)
    return str(content)


class BadRequest(ValueError):
    """The request is malformed; the message goes into a 400 body."""


def parse_openai(body: dict[str, Any]) -> FakePrompt:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array")
    system_parts: list[str] = []
    turns: list[tuple[str, str]] = []
    for m in messages:
        if not isinstance(m, dict):
            raise BadRequest("each message must be an object")
        role = str(m.get("role", "user"))
        text = _text_of(m.get("content"))
        if role in ("system", "developer"):
            system_parts.append(text)
        else:
            turns.append((role, text))
    system = "\n".join(system_parts)
    fmt = body.get("response_format") or {}
    json_mode = "json_object" if fmt.get("type") in ("json_object", "json_schema") else None
    schema = _SCHEMA.search(system)
    schema_name = schema.group(1) if schema else None
    if schema_name is None and fmt.get("type") == "json_schema":
        schema_name = (fmt.get("json_schema") or {}).get("name")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    return FakePrompt(
        api="openai",
        model=str(body.get("model") or "fake-model"),
        system=system,
        messages=turns,
        max_tokens=int(max_tokens) if max_tokens else None,
        stream=bool(body.get("stream")),
        json_mode=json_mode,
        schema_name=schema_name,
        body=body,
    )


def parse_anthropic(body: dict[str, Any]) -> FakePrompt:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: Field required")
    if not isinstance(body.get("max_tokens"), int):
        raise BadRequest("max_tokens: Field required")
    system = _text_of(body.get("system"))
    turns = [(str(m.get("role", "user")), _text_of(m.get("content"))) for m in messages]
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {}
    tool_name = None
    if tools and choice.get("type") == "tool":
        tool_name = choice.get("name")
        if tool_name not in {t.get("name") for t in tools}:
            raise BadRequest(f"tool_choice: tool '{tool_name}' not found in 'tools'")
    elif tools and choice.get("type") == "any":
        tool_name = tools[0].get("name")
    schema = _SCHEMA.search(system)
    return FakePrompt(
        api="anthropic",
        model=str(body.get("model") or "fake-model"),
        system=system,
        messages=turns,
        max_tokens=body["max_tokens"],
        stream=bool(body.get("stream")),
        json_mode="tool" if tool_name else None,
        tool_name=tool_name,
        schema_name=schema.group(1) if schema else (tool_name or None),
        body=body,
    )


def default_responder(prompt: FakePrompt) -> str | dict[str, Any]:
    """Schema-valid JSON from the project's stub when JSON is wanted, else a short text.

    JSON is wanted in JSON mode, with forced tool use, or when the system prompt names a schema
    (as a real model follows "respond with one JSON object" in its prompt).
    """
    from masterplan.llm.stub import fake_output

    m = _IDEA.search(prompt.user_text)
    idea = (m.group(1) if m else prompt.user_text).strip()
    idea = (idea.splitlines()[0] if idea else "the idea")[:120]
    if prompt.wants_json:
        try:
            return fake_output(prompt.schema_name or "", prompt.system, prompt.user_text)
        except ValueError:
            return {"answer": f"A considered answer about '{idea}'."}
    return f"Thinking about '{idea}': start with the customer, then the product."


# ---------------------------------------------------------------- replies


@dataclass(slots=True)
class Reply:
    """A generated answer, ready to be framed by either API."""

    text: str  # the text sent (JSON text for tool use)
    tool_input: dict[str, Any] | None  # set for an Anthropic tool_use reply
    input_tokens: int
    output_tokens: int
    truncated: bool  # cut at max_tokens


def cut_in_half(text: str) -> str:
    """The first half of `text` (at least one character): a JSON text cut mid-object."""
    return text[: max(1, len(text) // 2)]


def make_reply(
    prompt: FakePrompt, answer: str | dict[str, Any], *, invalid_json: bool, cut: bool = False
) -> Reply:
    """`invalid_json`: JSON that is unusable (mode "invalid_json"); `cut`: any content cut in
    the middle, without saying so in the finish reason (the `truncate_rate` fault)."""
    tool_input: dict[str, Any] | None = None
    truncated = False
    if prompt.json_mode == "tool":
        if isinstance(answer, dict):
            tool_input = answer
        else:
            try:
                parsed = json.loads(answer)
            except ValueError:
                parsed = None
            tool_input = parsed if isinstance(parsed, dict) else {}
        if invalid_json:
            tool_input = {}  # valid JSON, violates the schema
        text = json.dumps(tool_input)
        if cut:
            # The tool input as the SDK rebuilds it from a stream cut here: a partial object.
            text = cut_in_half(text)
            partial = jiter.from_json(text.encode(), partial_mode="trailing-strings")
            tool_input = partial if isinstance(partial, dict) else {}
    else:
        text = answer if isinstance(answer, str) else json.dumps(answer)
        if cut or (invalid_json and prompt.wants_json):
            text = cut_in_half(text)  # cut mid-object: unparseable
        if prompt.max_tokens is not None and tokens_of(len(text)) > prompt.max_tokens:
            text = text[: prompt.max_tokens * 4]
            truncated = True
    return Reply(text, tool_input, tokens_of(prompt.input_chars), tokens_of(len(text)), truncated)


def chunks_of(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def openai_completion(prompt: FakePrompt, reply: Reply) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": prompt.model,
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text, "refusal": None},
                "logprobs": None,
                "finish_reason": "length" if reply.truncated else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
        },
    }


def openai_chunks(prompt: FakePrompt, reply: Reply, size: int) -> Iterator[tuple[bool, bytes]]:
    """SSE frames of a streamed completion: (is_content_chunk, frame)."""
    cid, created = new_id("chatcmpl-"), int(time.time())
    opts = prompt.body.get("stream_options") or {}
    with_usage = bool(opts.get("include_usage"))

    def frame(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": prompt.model,
            "system_fingerprint": "fp_fake",
            "choices": choices,
        }
        if with_usage:
            chunk["usage"] = usage
        return sse(chunk)

    def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    yield False, frame(choice({"role": "assistant", "content": "", "refusal": None}))
    for piece in chunks_of(reply.text, size):
        yield True, frame(choice({"content": piece}))
    yield False, frame(choice({}, "length" if reply.truncated else "stop"))
    if with_usage:
        usage = {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
        }
        yield False, frame([], usage)
    yield False, b"data: [DONE]\n\n"


def _anthropic_block(reply: Reply, prompt: FakePrompt, *, empty: bool) -> dict[str, Any]:
    if reply.tool_input is not None:
        return {
            "type": "tool_use",
            "id": new_id("toolu_"),
            "name": prompt.tool_name,
            "input": {} if empty else reply.tool_input,
        }
    return {"type": "text", "text": "" if empty else reply.text}


def _stop_reason(reply: Reply) -> str:
    if reply.tool_input is not None:
        return "tool_use"
    return "max_tokens" if reply.truncated else "end_turn"


def anthropic_message(prompt: FakePrompt, reply: Reply) -> dict[str, Any]:
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": prompt.model,
        "content": [_anthropic_block(reply, prompt, empty=False)],
        "stop_reason": _stop_reason(reply),
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.input_tokens,
            "output_tokens": reply.output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def anthropic_events(prompt: FakePrompt, reply: Reply, size: int) -> Iterator[tuple[bool, bytes]]:
    """SSE frames of a streamed message: (is_content_chunk, frame)."""
    start = anthropic_message(prompt, reply)
    start.update(content=[], stop_reason=None)
    start["usage"] = {**start["usage"], "output_tokens": 1}
    yield False, sse({"type": "message_start", "message": start}, "message_start")
    block = _anthropic_block(reply, prompt, empty=True)
    yield False, sse(
        {"type": "content_block_start", "index": 0, "content_block": block}, "content_block_start"
    )
    yield False, sse({"type": "ping"}, "ping")
    for piece in chunks_of(reply.text, size):
        if reply.tool_input is not None:
            delta = {"type": "input_json_delta", "partial_json": piece}
        else:
            delta = {"type": "text_delta", "text": piece}
        event = {"type": "content_block_delta", "index": 0, "delta": delta}
        yield True, sse(event, "content_block_delta")
    yield False, sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    yield False, sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
            "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
        },
        "message_delta",
    )
    yield False, sse({"type": "message_stop"}, "message_stop")


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
