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

# Only for the wording of an answer (which idea it talks about), never for whether it fits a
# schema: that is decided by the request's own structured-output parameters.
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
    # What the request itself demands: "json_schema" (OpenAI response_format with a schema),
    # "json_object" (JSON mode: any JSON object), "tool" (Anthropic forced tool use) or None.
    json_mode: str | None = None
    tool_name: str | None = None
    # The schema sent in those parameters (json_schema's, or the forced tool's input_schema),
    # and its name; a schema named only in the prompt is not one.
    schema: dict[str, Any] | None = None
    schema_name: str | None = None
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def user_text(self) -> str:
        return "\n".join(text for role, text in self.messages if role == "user")

    @property
    def input_chars(self) -> int:
        return len(self.system) + sum(len(text) for _, text in self.messages)

    @property
    def wants_json(self) -> bool:
        """The request demands JSON (JSON mode, a schema or a forced tool)."""
        return self.json_mode is not None

    @property
    def wants_schema(self) -> bool:
        """The request carries a schema the answer must fit (json_schema or a forced tool)."""
        return self.json_mode in ("json_schema", "tool") and self.schema is not None

    @property
    def idea(self) -> str:
        """What the conversation is about, for the wording of an answer."""
        m = _IDEA.search(self.user_text) or _IDEA.search(self.system)
        idea = (m.group(1) if m else self.user_text).strip()
        return (idea.splitlines()[0] if idea else "the idea")[:120]


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
    if not isinstance(fmt, dict):
        raise BadRequest("'response_format' must be an object")
    json_mode: str | None = None
    schema: dict[str, Any] | None = None
    schema_name: str | None = None
    if fmt.get("type") == "json_object":
        json_mode = "json_object"
    elif fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not spec.get("name"):
            raise BadRequest("response_format.json_schema: 'name' is required")
        if not isinstance(spec.get("schema"), dict):
            raise BadRequest("response_format.json_schema: 'schema' must be an object")
        json_mode, schema, schema_name = "json_schema", spec["schema"], str(spec["name"])
    elif fmt.get("type") not in (None, "text"):
        raise BadRequest(f"response_format.type: unknown value {fmt.get('type')!r}")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    return FakePrompt(
        api="openai",
        model=str(body.get("model") or "fake-model"),
        system=system,
        messages=turns,
        max_tokens=int(max_tokens) if max_tokens else None,
        stream=bool(body.get("stream")),
        json_mode=json_mode,
        schema=schema,
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
    tool: dict[str, Any] | None = None
    if tools and choice.get("type") == "tool":
        tool = next((t for t in tools if t.get("name") == choice.get("name")), None)
        if tool is None:
            raise BadRequest(f"tool_choice: tool '{choice.get('name')}' not found in 'tools'")
    elif tools and choice.get("type") == "any":
        tool = tools[0]
    tool_name = tool.get("name") if tool is not None else None
    schema = tool.get("input_schema") if tool is not None else None
    if tool is not None and not isinstance(schema, dict):
        raise BadRequest(f"tools.0.input_schema: Field required (tool '{tool_name}')")
    return FakePrompt(
        api="anthropic",
        model=str(body.get("model") or "fake-model"),
        system=system,
        messages=turns,
        max_tokens=body["max_tokens"],
        stream=bool(body.get("stream")),
        json_mode="tool" if tool_name else None,
        tool_name=tool_name,
        schema=schema,
        schema_name=tool_name,
        body=body,
    )


def default_responder(prompt: FakePrompt) -> str | dict[str, Any]:
    """An honest model: only what the request itself demands, whatever its prompt asks for.

    * a schema in the request (response_format json_schema, a forced tool's input_schema): an
      object that fits that schema;
    * JSON mode without a schema: some valid JSON object, not shaped by any schema named in the
      prompt (a small model that follows formatting instructions loosely);
    * nothing demanded: prose.
    """
    if prompt.wants_schema:
        return schema_answer(prompt)
    if prompt.wants_json:
        return off_schema_answer(prompt)
    return f"Thinking about '{prompt.idea}': start with the customer, then the product."


def off_schema_answer(prompt: FakePrompt) -> dict[str, Any]:
    """A plausible JSON answer that follows no schema (what a model ignoring one returns)."""
    return {
        "answer": f"A considered answer about '{prompt.idea}'.",
        "highlights": ["start with one customer segment", "prove retention before scale"],
        "confidence": "medium",
    }


def schema_answer(prompt: FakePrompt) -> dict[str, Any]:
    """An object that fits the schema sent. For the project's own schemas the stub's answer
    (realistic wording and size) when it fits the schema's properties, else one built from it."""
    from masterplan.llm.stub import fake_output

    schema = prompt.schema or {}
    try:
        answer = fake_output(prompt.schema_name or "", prompt.system, prompt.user_text)
    except ValueError:
        answer = None
    if answer is not None and set(answer) == set(schema.get("properties", {})):
        return answer
    value = from_schema(schema, prompt.idea)
    return value if isinstance(value, dict) else {"answer": value}


def from_schema(schema: dict[str, Any], idea: str) -> Any:
    """A value valid for `schema` (JSON Schema: $ref/$defs, anyOf, enum, const, objects, arrays,
    bounds when given); strings talk about `idea`."""
    defs = schema.get("$defs", {})

    def value(s: dict[str, Any], name: str) -> Any:
        if "$ref" in s:
            return value(defs[s["$ref"].rsplit("/", 1)[-1]], name)
        if "anyOf" in s:
            return value(next((o for o in s["anyOf"] if o.get("type") != "null"), {}), name)
        if "allOf" in s:
            return value({k: v for part in s["allOf"] for k, v in part.items()}, name)
        if "const" in s:
            return s["const"]
        if s.get("enum"):
            return s["enum"][0]
        t = s.get("type")
        if isinstance(t, list):
            t = next((x for x in t if x != "null"), None)
        if t == "object":
            return {k: value(v, k) for k, v in s.get("properties", {}).items()}
        if t == "array":
            return [value(s.get("items", {}), name) for _ in range(max(1, s.get("minItems", 1)))]
        if t in ("integer", "number"):
            low, high = s.get("minimum", 0), s.get("maximum", 1)
            return low if t == "integer" else (low + high) / 2
        if t == "boolean":
            return True
        if t == "null":
            return None
        return f"{name.replace('_', ' ')} for '{idea}'"

    return value(schema, "answer")


# ---------------------------------------------------------------- replies


@dataclass(slots=True)
class Reply:
    """A generated answer, ready to be framed by either API."""

    text: str  # the text sent (JSON text for tool use)
    tool_input: dict[str, Any] | None  # set for an Anthropic tool_use reply
    input_tokens: int  # all of them, the cache's reads and writes included
    output_tokens: int
    truncated: bool  # cut at max_tokens
    cached_tokens: int = 0  # of input_tokens, read from the prompt cache
    cache_write_tokens: int = 0  # of input_tokens, written to it (Anthropic)


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


def _openai_usage(reply: Reply) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
    }


def _anthropic_usage(reply: Reply) -> dict[str, Any]:
    # Anthropic's input_tokens are those after the last cache breakpoint only.
    return {
        "input_tokens": reply.input_tokens - reply.cached_tokens - reply.cache_write_tokens,
        "output_tokens": reply.output_tokens,
        "cache_creation_input_tokens": reply.cache_write_tokens,
        "cache_read_input_tokens": reply.cached_tokens,
    }


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
        "usage": _openai_usage(reply),
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
        yield False, frame([], _openai_usage(reply))
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
        "usage": _anthropic_usage(reply),
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
            "usage": _anthropic_usage(reply),
        },
        "message_delta",
    )
    yield False, sse({"type": "message_stop"}, "message_stop")


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
