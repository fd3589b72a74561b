"""What the API accepts as text and as a founder's `context`, in one place.

The request schema and the routes enforce these rules and the OpenAPI document states them, so
a client (or a fuzzer) that follows the document is not refused, and one that does not is
refused with a 422 naming the field before anything is stored. Everything accepted can be stored
in PostgreSQL and read back: no NUL (PostgreSQL text cannot hold it), no unpaired surrogate (not
encodable as UTF-8), only finite numbers (NaN and Infinity are not JSON), bounded nesting (the
serializers recurse).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

MAX_IDEA_CHARS = 20_000
MAX_ANSWER_CHARS = 4_000  # a founder's answer in an interview
MAX_IDEMPOTENCY_KEY_CHARS = 128

# Exactly the characters `str.strip()` removes, spelled out: `\s` means something else in the
# ECMA-262 patterns of JSON Schema, and the document must say what the server does.
WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
              "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_WHITESPACE_CLASS = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NO_NUL_PATTERN = r"^[^\x00]*$"
# No NUL anywhere, and at least one character that is not whitespace.
IDEA_PATTERN = rf"^[^\x00]*[^\x00{_WHITESPACE_CLASS}][^\x00]*$"
# Printable ASCII, no surrounding space: what survives every proxy and log unchanged.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored as text, or None. The message never echoes the value."""
    nul = value.find("\x00")
    if nul >= 0:
        return f"contains a NUL character (\\u0000) at position {nul}; text must not hold NUL"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"contains an unpaired surrogate (\\u{ord(value[exc.start]):04x}) at position "
                f"{exc.start}; text must be valid Unicode")
    return None


@dataclass(frozen=True)
class ContextLimits:
    max_depth: int = 8
    max_keys: int = 200
    max_bytes: int = 64 * 1024

    @classmethod
    def of(cls, settings: Any) -> ContextLimits:
        return cls(settings.context_max_depth, settings.context_max_keys, settings.context_max_bytes)


Loc = tuple[str | int, ...]


def _segment(key: str) -> str:
    """A key as it may appear in a field path: never a raw NUL or surrogate, never long."""
    if text_problem(key) is not None:
        key = key.encode("unicode_escape").decode("ascii")
    return key if len(key) <= 40 else key[:37] + "..."


def context_problem(context: dict[str, Any], limits: ContextLimits) -> tuple[Loc, str] | None:
    """The first reason `context` is refused, as (field path, message naming the limit), or None.

    Each rule is one the document can state (JSON Schema counts keys per object, not in all); the
    size limit bounds the whole.

    Walked with an explicit stack and stopped at the first problem, so a hostile document costs
    no recursion and no more than one pass."""
    stack: list[tuple[Any, int, Loc]] = [(context, 1, ("context",))]
    while stack:
        value, depth, loc = stack.pop()
        if isinstance(value, dict | list) and depth > limits.max_depth:
            return loc, (f"is nested {depth} levels deep; the limit is {limits.max_depth} "
                         "(CONTEXT_MAX_DEPTH)")
        if isinstance(value, dict):
            if len(value) > limits.max_keys:
                return loc, (f"has {len(value)} keys; the limit is {limits.max_keys} in one object "
                             "(CONTEXT_MAX_KEYS)")
            for key, item in value.items():
                if (why := text_problem(key)) is not None:
                    return (*loc, _segment(key)), f"key {why}"
                stack.append((item, depth + 1, (*loc, _segment(key))))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, (*loc, i)) for i, item in enumerate(value))
        elif isinstance(value, str):
            if (why := text_problem(value)) is not None:
                return loc, why
        elif isinstance(value, float) and not math.isfinite(value):
            return loc, f"is {value}; numbers must be finite (NaN and Infinity are not JSON)"
    size = len(json.dumps(context, ensure_ascii=False, separators=(",", ":")).encode())
    if size > limits.max_bytes:
        return ("context",), (f"is {size} bytes as JSON; the limit is {limits.max_bytes} "
                              "(CONTEXT_MAX_BYTES)")
    return None


def context_json_schemas(limits: ContextLimits) -> dict[str, dict[str, Any]]:
    """The context's rules as OpenAPI components: `Context`, and `ContextValue<n>` for a value
    that may still hold n levels of arrays or objects (JSON Schema cannot count depth itself)."""

    def obj(values: str, description: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "object", "maxProperties": limits.max_keys,
            "propertyNames": {"pattern": NO_NUL_PATTERN},
            "additionalProperties": {"$ref": f"#/components/schemas/{values}"},
        }
        if description:
            out["description"] = description
        return out

    schemas: dict[str, dict[str, Any]] = {
        "ContextText": {"type": "string", "pattern": NO_NUL_PATTERN},
    }
    for left in range(limits.max_depth):
        options: list[dict[str, Any]] = [{"$ref": "#/components/schemas/ContextText"},
                                         {"type": "number"}, {"type": "boolean"}, {"type": "null"}]
        if left:
            inner = f"ContextValue{left - 1}"
            options += [{"type": "array", "items": {"$ref": f"#/components/schemas/{inner}"}},
                        obj(inner)]
        schemas[f"ContextValue{left}"] = {"anyOf": options}
    schemas["Context"] = obj(
        f"ContextValue{limits.max_depth - 1}",
        f"Founder context, e.g. interview answers: any JSON object nested at most "
        f"{limits.max_depth} levels deep (CONTEXT_MAX_DEPTH), at most {limits.max_keys} keys in any "
        f"one object (CONTEXT_MAX_KEYS), at most {limits.max_bytes} bytes as compact JSON "
        "(CONTEXT_MAX_BYTES); no text (keys included) may hold NUL or an unpaired surrogate.")
    return schemas

