"""How many tokens a text is, when the real count is only known after the call (or never)."""

from __future__ import annotations

CHARS_PER_TOKEN = 4


def estimate_tokens(text_chars: int) -> int:
    """Estimate the tokens of `text_chars` characters as ceil(chars / 4); 0 for no text.

    BPE tokenizers average about four characters per token on English text; counting
    exactly would need each provider's tokenizer on the hot path. The estimate only has to
    be close: after the call, reconcile refunds an overestimate and records an underestimate
    as debt, so the bucket ends up charged with the provider's real usage either way. It is
    also the usage of a reply whose provider reported none (a local server, the stub).
    """
    if text_chars < 0:
        raise ValueError(f"text_chars must be >= 0, got {text_chars}")
    return -(-text_chars // CHARS_PER_TOKEN)


# The name the rate limiter's API has always had for the same estimate of a prompt.
estimate_prompt_tokens = estimate_tokens


def reservation_tokens(prompt_chars: int, max_tokens: int) -> int:
    """Tokens to reserve for one call: the prompt estimate plus `max_tokens`.

    OpenAI-compatible providers count `max_tokens` against the per-minute budget when they
    admit a request, before any output exists, so the reservation must too.
    """
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    return estimate_tokens(prompt_chars) + max_tokens
