"""The provider protocol and the values that cross it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from masterplan.ratelimit.estimate import estimate_tokens

if TYPE_CHECKING:
    from masterplan.settings import StructuredOutput


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # "user" or "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """What a caller asks of a provider. `schema` set means: JSON that validates against it."""

    system: str
    messages: tuple[Message, ...]
    max_tokens: int = 1024
    temperature: float = 0.3
    schema: type[BaseModel] | None = None
    # Free-form context for logs (job id, stage); never sent to a provider.
    tags: dict[str, str] = field(default_factory=dict)
    # The share of each provider bucket this call must leave for other keys' first jobs
    # (FAIR_HEADROOM for a key's second and later jobs in flight; masterplan/admission.py).
    headroom: float = 0.0
    # How the schema is asked for; None: the provider's configured mode. The router sets it when
    # that provider's model was degraded to a weaker one (masterplan/llm/structured.py).
    structured_output: StructuredOutput | None = None
    # The system prompt is shared with other requests (the personas of one job: the idea and
    # the context): worth an explicit cache mark where the API has one (Anthropic's
    # cache_control). Implicit prefix caches (OpenAI, Gemini, Groq) need only that it comes first.
    cache_system: bool = False

    def with_messages(self, *extra: Message) -> LLMRequest:
        return replace(self, messages=self.messages + extra)

    @property
    def prompt_chars(self) -> int:
        return len(self.system) + sum(len(m.content) for m in self.messages)


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one call. `input_tokens` counts every input token (OpenAI's convention,
    `prompt_tokens`): `cached_input_tokens` (read from the provider's prompt cache) and
    `cache_write_tokens` (written to it, Anthropic only) are parts of it, priced apart."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def estimated(cls, request: LLMRequest, reply_chars: int) -> Usage:
        """The usage of a reply whose provider counted none (a local server, the stub): an
        estimate keeps cost and rate limits honest."""
        return cls(estimate_tokens(request.prompt_chars), estimate_tokens(reply_chars))


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What the provider said about its remaining capacity (None: it did not say)."""

    remaining_tokens: int | None = None
    remaining_requests: int | None = None


@dataclass(slots=True)
class Completion:
    text: str
    usage: Usage
    provider: str
    model: str
    latency_ms: int
    request_id: str | None = None
    rate_limit: RateLimitInfo | None = None
    # The validated object when the request had a schema (filled by the router).
    data: BaseModel | None = None

    @classmethod
    def of(cls, text: str, end: StreamEnd, latency_ms: int) -> Completion:
        """A whole reply from its text and the facts a stream ends with."""
        return cls(text, end.usage, end.provider, end.model, latency_ms, end.request_id,
                   end.rate_limit)

    def end(self) -> StreamEnd:
        """This reply's facts, as the last item of a stream."""
        return StreamEnd(self.usage, self.provider, self.model, self.request_id, self.rate_limit)


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last item of a stream: usage and provider facts."""

    usage: Usage
    provider: str
    model: str
    request_id: str | None = None
    rate_limit: RateLimitInfo | None = None


StreamItem = str | StreamEnd


class Provider(Protocol):
    """One LLM backend. Adapters raise only `masterplan.errors.ProviderError` subclasses."""

    name: str
    model: str

    def complete(self, request: LLMRequest) -> Completion: ...

    def stream(self, request: LLMRequest) -> Iterator[StreamItem]: ...


def json_instructions(schema: type[BaseModel]) -> str:
    """The text appended to a system prompt when JSON output is required.

    Every provider gets the schema in the prompt; JSON mode (or tool use) only guarantees syntax.
    """
    import json

    return (
        f"\n\nRespond with one JSON object only, no prose, no code fences.\n"
        f"Schema name: {schema.__name__}\n"
        f"JSON schema: {json.dumps(schema.model_json_schema(), separators=(',', ':'))}"
    )


def jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value
