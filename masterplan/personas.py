"""The five specialist personas, the synthesis and the critique: prompts and requests
(the stages themselves are declared in masterplan/stages.py).

Pure functions: ids and texts in, `LLMRequest` out. No I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from masterplan.interview import render_context
from masterplan.llm.base import LLMRequest, Message, json_instructions
from masterplan.schemas import Critique, Masterplan, PersonaOutput


class PersonaKey(StrEnum):
    MARKET = "market"
    TECHNICAL = "technical"
    FINANCE = "finance"
    RISK = "risk"
    GROWTH = "growth"


@dataclass(frozen=True)
class Persona:
    key: PersonaKey
    title: str
    brief: str


PERSONAS: tuple[Persona, ...] = (
    Persona(
        PersonaKey.MARKET,
        "Market & customers analyst",
        "Size the market, name the customer segments and their pains, the alternatives they use "
        "today and why they would switch. Be concrete about who pays.",
    ),
    Persona(
        PersonaKey.TECHNICAL,
        "Technical architect",
        "Design the system: components, data model, integrations, build-vs-buy, scaling limits "
        "and the hardest technical problem. Prefer boring technology where it serves.",
    ),
    Persona(
        PersonaKey.FINANCE,
        "Finance & unit economics analyst",
        "Work out pricing, customer acquisition cost, gross margin, payback and the cash needed "
        "to reach the next milestone. Show the numbers behind each claim.",
    ),
    Persona(
        PersonaKey.RISK,
        "Risk, legal & security counsel",
        "Identify regulatory, legal, security and privacy exposure, liability, and what must be "
        "true before launch. Rank by likelihood times impact.",
    ),
    Persona(
        PersonaKey.GROWTH,
        "Growth & go-to-market lead",
        "Choose the first channel, the launch sequence, the activation and retention loops, and "
        "the metric that proves traction in 90 days.",
    ),
)
PERSONA_KEYS: tuple[str, ...] = tuple(p.key.value for p in PERSONAS)
_BY_KEY = {p.key.value: p for p in PERSONAS}


def persona(key: str) -> Persona:
    try:
        return _BY_KEY[key]
    except KeyError:
        raise ValueError(
            f"unknown persona {key!r}; expected one of {', '.join(PERSONA_KEYS)}"
        ) from None


def _idea_block(idea: str, context: dict[str, Any] | None) -> str:
    """The idea and what the founder gave: an interview as its transcript and tracked
    assumptions (masterplan/interview.py), anything else as JSON."""
    text = f"Startup idea:\n{idea.strip()}"
    interview, rest = render_context(context or {})
    if interview:
        text += "\n\n" + interview
    if rest:
        text += "\n\nFounder's context:\n" + json.dumps(rest, indent=2, sort_keys=True)
    return text


def persona_system(idea: str, context: dict[str, Any] | None) -> str:
    """What the five persona requests of one job share, word for word: sent first (the system
    prompt), so that the providers' prefix caches serve it to the four after the first."""
    return (
        "You sit on a startup advisory board. Each member analyses the idea below from their "
        "own speciality, named in the next message. Be specific to this idea; no generic "
        "advice." + json_instructions(PersonaOutput) + "\n\n" + _idea_block(idea, context)
    )


def persona_request(
    key: str, idea: str, context: dict[str, Any] | None, *, max_tokens: int = 1200
) -> LLMRequest:
    """One persona's request: the shared system prompt, then its own brief."""
    p = persona(key)
    return LLMRequest(
        system=persona_system(idea, context),
        messages=(Message("user", f"You are the {p.title} on this board. {p.brief}"),),
        max_tokens=max_tokens,
        schema=PersonaOutput,
        tags={"stage": p.key.value},
        cache_system=True,
    )


def synthesis_request(
    idea: str,
    context: dict[str, Any] | None,
    findings: dict[str, dict[str, Any]],
    *,
    max_tokens: int = 2000,
) -> LLMRequest:
    system = (
        "You are the chief architect. Merge the specialists' findings into one architecture "
        "masterplan: executive summary, components and data flow, stack, a phased roadmap, "
        "risks and success metrics. Resolve their disagreements explicitly."
        + json_instructions(Masterplan)
    )
    body = _idea_block(idea, context) + "\n\nSpecialists' findings:\n"
    body += json.dumps(findings, indent=1, sort_keys=True)
    return LLMRequest(
        system=system,
        messages=(Message("user", body),),
        max_tokens=max_tokens,
        schema=Masterplan,
        tags={"stage": "synthesis"},
    )


def critique_request(idea: str, plan: dict[str, Any], *, max_tokens: int = 800) -> LLMRequest:
    system = (
        "You are the devil's advocate. Attack this masterplan: the strongest objections, the "
        "kill criteria that would prove it wrong early, and a verdict with a score from 0 to 10."
        + json_instructions(Critique)
    )
    body = f"Startup idea:\n{idea.strip()}\n\nMasterplan:\n" + json.dumps(plan, indent=1)
    return LLMRequest(
        system=system,
        messages=(Message("user", body),),
        max_tokens=max_tokens,
        schema=Critique,
        tags={"stage": "critique"},
    )
