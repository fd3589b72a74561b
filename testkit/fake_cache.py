"""The fake's prompt cache: how many of a request's input tokens each API reports as cached.

* OpenAI flavours (OpenAI, Gemini, Groq: implicit caching): the longest prefix this prompt
  shares with one seen within `ttl_s`, counted when it reaches `min_tokens` (1024) and rounded
  down to `block_tokens` (128), as OpenAI documents; reported as
  `prompt_tokens_details.cached_tokens`, a part of `prompt_tokens`.
* Anthropic (explicit caching): only up to the last block marked `cache_control`, counted from
  the start (tools, system, messages); an exact match of that prefix is a read
  (`cache_read_input_tokens`), anything else a write (`cache_creation_input_tokens`), both
  outside `input_tokens`. A prefix under `min_tokens` is neither, as on Anthropic.

Tokens are the fake's four characters a token. Pure, apart from the clock passed in.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from testkit.fake_wire import FakePrompt, _text_of

__all__ = ["Cached", "PromptCache"]


@dataclass(frozen=True, slots=True)
class Cached:
    read: int = 0  # input tokens served from the cache
    written: int = 0  # input tokens written to it (Anthropic only)


def _openai_text(prompt: FakePrompt) -> str:
    # The structured-output schema is part of OpenAI's cached prefix; it goes first here.
    fmt = json.dumps(prompt.body.get("response_format"), sort_keys=True)
    return fmt + "".join(f"\x00{role}\x00{text}" for role, text in
                         [("system", prompt.system), *prompt.messages])


def _marked_prefix(body: dict[str, Any]) -> tuple[str, int] | None:
    """Anthropic's cached prefix: its key (tools, system and messages up to and including the
    last block marked cache_control) and its characters of text; None without a mark."""
    key = [json.dumps(body.get("tools"), sort_keys=True)]
    chars, marked = 0, None
    blocks: list[Any] = []
    system = body.get("system")
    blocks.extend(system if isinstance(system, list) else [system] if system else [])
    for m in body.get("messages") or []:
        content = m.get("content") if isinstance(m, dict) else None
        blocks.extend(content if isinstance(content, list) else [content])
    for block in blocks:
        text = _text_of([block]) if not isinstance(block, str) else block
        key.append(text)
        chars += len(text)
        if isinstance(block, dict) and block.get("cache_control"):
            marked = ("\x00".join(key), chars)
    return marked


class PromptCache:
    """One fake server's cache. `enabled=False`: nothing is ever cached."""

    def __init__(self, *, enabled: bool = True, ttl_s: float = 300.0, min_tokens: int = 1024,
                 block_tokens: int = 128) -> None:
        self.enabled = enabled
        self.ttl_s, self.min_tokens, self.block_tokens = ttl_s, min_tokens, block_tokens
        self._seen: dict[str, float] = {}  # prefix or prompt -> when it expires
        self._lock = threading.Lock()

    def lookup(self, prompt: FakePrompt, input_tokens: int, now: float) -> Cached:
        """What this request finds in the cache (and leaves there for the next ones)."""
        if not self.enabled:
            return Cached()
        with self._lock:
            self._seen = {k: t for k, t in self._seen.items() if t > now}
            if prompt.api == "anthropic":
                return self._explicit(prompt, input_tokens, now)
            return self._implicit(prompt, input_tokens, now)

    def _implicit(self, prompt: FakePrompt, input_tokens: int, now: float) -> Cached:
        text = _openai_text(prompt)
        best = max((_common(text, seen) for seen in self._seen), default=0)
        self._seen[text] = now + self.ttl_s
        tokens = min(best // 4, input_tokens)
        if tokens < self.min_tokens:
            return Cached()
        return Cached(read=tokens // self.block_tokens * self.block_tokens)

    def _explicit(self, prompt: FakePrompt, input_tokens: int, now: float) -> Cached:
        marked = _marked_prefix(prompt.body)
        if marked is None:
            return Cached()
        key, chars = marked
        tokens = min(-(-chars // 4), input_tokens)
        if tokens < self.min_tokens:
            return Cached()
        hit = key in self._seen
        self._seen[key] = now + self.ttl_s  # a read refreshes the entry's lifetime
        return Cached(read=tokens) if hit else Cached(written=tokens)


def _common(a: str, b: str) -> int:
    """The length of the longest common prefix of `a` and `b`."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo
