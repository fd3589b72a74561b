"""LLM providers, the fallback router and structured output."""
