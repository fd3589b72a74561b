"""Structured output: how a schema is asked for, parsing and the one repair, and what happens
when a provider refuses the way it was asked.

* Modes, strongest first (`masterplan.settings.StructuredOutput`; each provider's default is in
  `KNOWN_PROVIDERS`): `json_schema` (the schema in `response_format`, strict where the provider
  enforces it), `tool` (Anthropic forced tool use), `json_object` (JSON mode: syntax only) and
  `prompt` (no response_format). The schema is in the system prompt in every mode.
* `strict_schema`: a pydantic model's JSON schema in the form strict structured outputs accept.
* `ModeUnsupported`: a 400 that refuses the mode (the adapter says so, it knows what it sent).
  The router degrades that provider's model one step (`WEAKER`), retries the call at once, and
  `ModeMemory` remembers the weaker mode for every worker.
* `parse` / `repair_request`: validate a reply, and the one repair request for a bad one.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import replace
from typing import Any, Final

from pydantic import BaseModel, ValidationError

from masterplan import errors as E
from masterplan.llm.base import LLMRequest, Message
from masterplan.llm.outcomes import CallOutcome
from masterplan.ratelimit.limiter import unavailable_as_limiter_error
from masterplan.settings import StructuredOutput

log = logging.getLogger(__name__)

# The next weaker mode when a provider refuses one; `tool` and `prompt` are never refused.
WEAKER: Final[dict[str, StructuredOutput]] = {"json_schema": "json_object", "json_object": "prompt"}

# How long a degraded mode is remembered: a provider may add json_schema to a model later.
MODE_TTL_S = 7 * 24 * 3600


def in_mode(request: LLMRequest, mode: StructuredOutput) -> LLMRequest:
    """The same request, asked for in `mode`."""
    return replace(request, structured_output=mode)


# ---------------------------------------------------------------- the strict schema

# The keywords strict structured outputs accept. Anything else (minLength, maximum, minItems,
# pattern, format, default, ...) is removed; a constraint is kept as a hint in the description,
# and pydantic still enforces it on the reply.
_KEPT: Final = frozenset({"type", "properties", "required", "additionalProperties", "items",
                          "enum", "const", "anyOf", "$ref", "$defs", "description", "title"})
_NOT_HINTS: Final = frozenset({"default", "examples", "discriminator"})


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema as strict structured outputs (OpenAI, Gemini) require it: every
    object closed (`additionalProperties: false`) with every property required, only the
    keywords in `_KEPT`, `$ref`s into `$defs` with nothing beside them.

    Raises ValueError for what strict mode cannot say (an object without properties, allOf
    over several schemas), so a new stage's schema is caught by the tests, not by a provider.
    """
    raw = model.model_json_schema()
    defs = raw.get("$defs", {})
    out = _strict(raw, defs)
    if defs:
        out["$defs"] = {name: _strict(d, defs) for name, d in defs.items()}
    if out.get("type") != "object":
        raise ValueError(f"{model.__name__}: the root of a strict schema must be an object")
    return out


def _strict(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    node.pop("$defs", None)
    if "allOf" in node:  # older pydantic: a $ref with a description is allOf: [{$ref}]
        parts = node.pop("allOf")
        if len(parts) != 1:
            raise ValueError(f"allOf over {len(parts)} schemas has no strict form")
        node = {**parts[0], **node}
    if "$ref" in node and len(node) > 1:  # a $ref may not have siblings: inline it
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    out: dict[str, Any] = {}
    hints: list[str] = []
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _strict(v, defs) for name, v in value.items()}
        elif key == "items":
            out[key] = _strict(value, defs)
        elif key == "anyOf":
            out[key] = [_strict(v, defs) for v in value]
        elif key in _KEPT:
            out[key] = value
        elif key not in _NOT_HINTS:
            hints.append(f"{key}: {json.dumps(value)}")
    if hints:
        out["description"] = " ".join([out.get("description", ""), f"({', '.join(hints)})"]).strip()
    if out.get("type") == "object" or "properties" in out:
        if not out.get("properties"):
            raise ValueError("an object without properties has no strict form")
        out["required"] = list(out["properties"])
        out["additionalProperties"] = False
    return out


# ---------------------------------------------------------------- a refused mode

_ABOUT_THE_MODE = re.compile(r"response[_ ]format|json[_ ]schema|response_schema", re.IGNORECASE)


class ModeUnsupported(E.BadRequest):
    """A 400 refusing the structured-output mode the request was sent in (OpenAI: "'response_
    format' of type 'json_schema' is not supported with this model", Groq: "This model does not
    support response format `json_schema`", Gemini: a bad `response_schema`). Not the call's
    failure: the router retries it at once in the next weaker mode."""

    outcome = CallOutcome.MODE_UNSUPPORTED

    def __init__(self, message: str, *, mode: StructuredOutput, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.mode = mode


def refused_mode(err: E.ProviderError, mode: StructuredOutput | None) -> E.ProviderError:
    """`err` as `ModeUnsupported` when it is a 400 whose message is about the response format
    and the request sent one (`mode` can be degraded); otherwise `err` unchanged."""
    if (mode is not None and mode in WEAKER and type(err) is E.BadRequest and err.status == 400
            and _ABOUT_THE_MODE.search(str(err))):
        return ModeUnsupported(str(err), mode=mode, provider=err.provider, status=err.status,
                               request_id=err.request_id)
    return err


# ---------------------------------------------------------------- remembered for every worker

# Set the weaker mode unless the one stored is already at least as weak (ARGV[3..] are the
# modes stronger than ARGV[1]), so two workers degrading at once never undo each other.
_DEGRADE = """
local current = redis.call('GET', KEYS[1])
local stronger = not current
for i = 3, #ARGV do
  if current == ARGV[i] then stronger = true end
end
if stronger then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_ORDER: Final[tuple[StructuredOutput, ...]] = ("json_schema", "json_object", "prompt")


def _key(prefix: str, provider: str, model: str) -> str:
    return f"{prefix}:so:{provider}:{model}"


class ModeMemory:
    """The weaker mode a provider's model was degraded to, shared by every worker in Redis
    (`<prefix>:so:<provider>:<model>`, kept `MODE_TTL_S`) and kept in this process too.

    Best effort, like the router's bookkeeping after a reply: Redis unreachable means one
    WARNING and the mode this process knows (at worst the configured one, which costs one more
    refused call), never an exception. `client=None`: this process only.
    """

    def __init__(self, client: Any | None, *, prefix: str = "mp", ttl_s: int = MODE_TTL_S) -> None:
        self._r = client
        self._degrade = client.register_script(_DEGRADE) if client is not None else None
        self._prefix = prefix
        self.ttl_s = ttl_s
        self._local: dict[tuple[str, str], tuple[StructuredOutput, float]] = {}
        self._lock = threading.Lock()

    def _remember(self, provider: str, model: str, mode: StructuredOutput) -> None:
        with self._lock:
            known = self._local.get((provider, model))
            if known is None or _ORDER.index(mode) >= _ORDER.index(known[0]):
                self._local[(provider, model)] = (mode, time.monotonic() + self.ttl_s)

    def get(self, provider: str, model: str) -> StructuredOutput | None:
        """The degraded mode of this provider's model, or None: use the configured one."""
        with self._lock:
            known = self._local.get((provider, model))
        if known is not None and known[1] > time.monotonic():
            return known[0]
        if self._r is None:
            return None
        try:
            with unavailable_as_limiter_error("the structured-output modes"):
                raw = self._r.get(_key(self._prefix, provider, model))
        except E.LimiterUnavailable as exc:
            log.warning("provider %s: its structured-output mode not read, Redis unavailable: %s",
                        provider, exc, extra={"provider": provider})
            return None
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        if text not in _ORDER:
            return None
        mode = _ORDER[_ORDER.index(text)]
        self._remember(provider, model, mode)
        return mode

    def degrade(self, provider: str, model: str, mode: StructuredOutput) -> None:
        """Remember that this provider's model must be asked in `mode` (or weaker)."""
        self._remember(provider, model, mode)
        if self._degrade is None:
            return
        stronger = _ORDER[: _ORDER.index(mode)]
        try:
            with unavailable_as_limiter_error("the structured-output modes"):
                self._degrade(keys=[_key(self._prefix, provider, model)],
                              args=[mode, self.ttl_s * 1000, *stronger])
        except E.LimiterUnavailable as exc:
            log.warning("provider %s: its degrade to %s kept in this process only, Redis "
                        "unavailable: %s", provider, mode, exc, extra={"provider": provider})

    def forget(self, provider: str, model: str) -> None:
        """Ask in the configured mode again (a test, or an operator after a model upgrade)."""
        with self._lock:
            self._local.pop((provider, model), None)
        if self._r is not None:
            with unavailable_as_limiter_error("the structured-output modes"):
                self._r.delete(_key(self._prefix, provider, model))


# ---------------------------------------------------------------- parse and repair


def _strip_fences(text: str) -> str:
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        if t.rstrip().endswith("```"):
            t = t.rstrip()[:-3]
    return t.strip()


def parse(text: str, schema: type[BaseModel], *, provider: str = "") -> BaseModel:
    """The validated object, or InvalidOutput saying what is wrong (short, for the repair)."""
    try:
        data = json.loads(_strip_fences(text))
    except json.JSONDecodeError as exc:
        raise E.InvalidOutput(f"not valid JSON: {exc.msg} at char {exc.pos}",
                              provider=provider) from None
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise E.InvalidOutput(f"does not match {schema.__name__}: {problems}",
                              provider=provider) from None


def repair_request(request: LLMRequest, bad_text: str, error: E.InvalidOutput) -> LLMRequest:
    """The original conversation plus the bad reply and what was wrong with it."""
    assert request.schema is not None
    return request.with_messages(
        Message("assistant", bad_text[:4000] or "(empty)"),
        Message(
            "user",
            f"Your reply was invalid: {error}. Reply again with one JSON object that validates "
            f"against the {request.schema.__name__} schema given above. JSON only.",
        ),
    )
