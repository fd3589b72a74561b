"""How many tokens to reserve before a call, when the real count is only known after it."""

from __future__ import annotations

CHARS_PER_TOKEN = 4


def estimate_prompt_tokens(text_chars: int) -> int:
    """Estimate the prompt's tokens as ceil(chars / 4).

    BPE tokenizers average about four characters per token on English text; counting
    exactly would need each provider's tokenizer on the hot path. The estimate only has to
    be close: after the call, reconcile refunds an overestimate and records an underestimate
    as debt, so the bucket ends up charged with the provider's real usage either way.
    """
    if text_chars < 0:
        raise ValueError(f"text_chars must be >= 0, got {text_chars}")
    return -(-text_chars // CHARS_PER_TOKEN)


def reservation_tokens(prompt_chars: int, max_tokens: int) -> int:
    """Tokens to reserve for one call: the prompt estimate plus `max_tokens`.

    OpenAI-compatible providers count `max_tokens` against the per-minute budget when they
    admit a request, before any output exists, so the reservation must too.
    """
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    return estimate_prompt_tokens(prompt_chars) + max_tokens
