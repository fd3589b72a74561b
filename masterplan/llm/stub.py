"""The deterministic stub provider: idea- and persona-aware output that fits the schemas.

Used for demos and tests when no provider key is set. The same request gives the same answer.
Token counts are realistic (about 4 characters a token) so cost and rate-limit paths are real.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from typing import Any

from masterplan.llm.base import Completion, LLMRequest, StreamEnd, StreamItem, Usage

_IDEA = re.compile(r"Startup idea:\n(.+?)(?:\n\n|$)", re.DOTALL)
_SCHEMA = re.compile(r"Schema name: (\w+)")

_ANGLES = {
    "market": ("customer demand", "who pays and why they switch"),
    "technical": ("system design", "the hardest technical problem"),
    "finance": ("unit economics", "payback and cash needed"),
    "risk": ("regulatory and security exposure", "what must be true before launch"),
    "growth": ("go-to-market", "the first channel that scales"),
}
_TITLES = {
    "Market & customers": "market",
    "Technical architect": "technical",
    "Finance & unit economics": "finance",
    "Risk, legal & security": "risk",
    "Growth & go-to-market": "growth",
}


def _persona_of(*texts: str) -> str:
    """The persona named in the first of `texts` that names one (its brief, then the system)."""
    for text in texts:
        for title, key in _TITLES.items():
            if title in text:
                return key
    return "market"


def _idea_of(text: str) -> str:
    m = _IDEA.search(text)
    idea = (m.group(1) if m else text).strip().splitlines()[0] if text.strip() else "the idea"
    return idea[:120]


def _pick(seed: str, options: list[str], n: int) -> list[str]:
    h = int(hashlib.sha256(seed.encode()).hexdigest(), 16)
    return [options[(h >> (4 * i)) % len(options)] for i in range(n)]


def fake_output(schema_name: str, system: str, user_text: str) -> dict[str, Any]:
    """A schema-valid answer for `schema_name`, shaped by the idea and persona in the prompt."""
    # The idea is in the user turn, or (the personas' shared prefix) in the system prompt.
    idea = _idea_of(user_text if _IDEA.search(user_text) or not _IDEA.search(system) else system)
    if schema_name == "PersonaOutput":
        key = _persona_of(user_text, system)
        focus, question = _ANGLES[key]
        levels = _pick(idea + key, ["low", "medium", "high"], 2)
        return {
            "summary": f"{key.title()} view of '{idea}': viable if {question} is answered early.",
            "key_findings": [
                f"{focus.capitalize()} is the deciding factor for '{idea}'.",
                f"The first 100 customers of '{idea}' come from a narrow, reachable niche.",
                f"A {key} review every quarter keeps the plan honest.",
            ],
            "assumptions": [
                {"statement": f"Buyers of '{idea}' feel the pain weekly.", "confidence": 0.6},
                {"statement": f"{focus.capitalize()} can be validated in 8 weeks.", "confidence": 0.5},
            ],
            "risks": [
                {"risk": f"{focus.capitalize()} is weaker than assumed.", "severity": levels[0],
                 "mitigation": "Run a paid pilot before building the full product."},
                {"risk": "A funded incumbent copies the wedge.", "severity": levels[1],
                 "mitigation": "Own a workflow, not a feature."},
            ],
            "recommendations": [
                f"Answer '{question}' with ten customer interviews.",
                "Ship a concierge version in four weeks.",
            ],
            "open_questions": [f"What would make '{idea}' a must-have rather than a nice-to-have?"],
        }
    if schema_name == "Masterplan":
        return {
            "executive_summary": f"Build '{idea}' as a focused product for one niche, "
            "prove retention in 90 days, then widen.",
            "components": [
                {"name": "web app", "responsibility": "onboarding, core workflow, billing"},
                {"name": "API", "responsibility": "business logic and integrations"},
                {"name": "worker queue", "responsibility": "long-running jobs and notifications"},
                {"name": "database", "responsibility": "system of record"},
            ],
            "data_flow": "web app -> API -> database; API enqueues jobs -> workers -> database",
            "stack": ["Python", "FastAPI", "PostgreSQL", "Redis", "Celery"],
            "roadmap": [
                {"name": "validate", "duration_weeks": 4, "goals": ["10 interviews", "pilot"]},
                {"name": "MVP", "duration_weeks": 8, "goals": ["core workflow", "billing"]},
                {"name": "scale", "duration_weeks": 12, "goals": ["second channel", "SOC 2"]},
            ],
            "risks": [{"risk": "slow adoption", "severity": "medium",
                       "mitigation": "narrow the niche until retention holds"}],
            "success_metrics": ["week-4 retention >= 40%", "CAC payback < 12 months"],
        }
    if schema_name == "Critique":
        score = 3 + int(hashlib.sha256(idea.encode()).hexdigest(), 16) % 6
        return {
            "strongest_objections": [
                f"Nothing shows that buyers of '{idea}' will pay before it is built.",
                "The roadmap assumes one channel works; none is proven.",
            ],
            "kill_criteria": ["fewer than 3 of 10 pilots convert to paid", "CAC > 3x first-year revenue"],
            "verdict": "pivot" if score < 5 else "go",
            "score": score,
            "reasoning": "The plan is coherent but rests on untested demand.",
        }
    if schema_name == "TurnOutput":
        answers = user_text.count("\nFounder: ")
        base = 3 + min(answers, 5)
        return {
            "eval": {name: {"score": min(10, base + i % 2),
                            "reason": f"{name.replace('_', ' ')} after {answers} answers"}
                     for i, name in enumerate(("problem", "customer", "market", "differentiation",
                                               "feasibility", "business_model"))},
            "assumptions": [
                {"statement": f"Buyers of '{idea}' feel the pain weekly.",
                 "status": "confirmed" if answers >= 2 else "added"},
                *([{"statement": "A pilot customer will pay within 8 weeks.",
                    "status": "challenged" if answers >= 4 else "added"}] if answers else []),
            ],
            "choices": dict(zip(("first", "second", "third", "fourth"),
                                _INTERVIEW_CHOICES[answers % len(_INTERVIEW_CHOICES)],
                                strict=False)),
            "done": answers >= 4,
        }
    raise ValueError(f"the stub has no output for schema {schema_name!r}")


_INTERVIEW_QUESTIONS = (
    "Who has this problem most painfully today, and how do they solve it now?",
    "What would make them switch to you in the first month?",
    "How big is the first market you can reach without paid ads?",
    "What is the hardest part to build, and what would you buy instead of build?",
    "Who pays, how much, and how often?",
    "What has to be true in 90 days for you to keep going?",
)
_INTERVIEW_CHOICES = (
    ["Small businesses that do it by hand", "Individuals", "Not sure yet"],
    ["Price", "Speed", "Trust"],
    ["A few hundred customers", "Thousands", "I have not sized it"],
    ["The core workflow", "Integrations", "Payments"],
    ["The user, monthly", "The business, per transaction"],
)


def interview_question(request: LLMRequest) -> str:
    """The stub interviewer's next question: the next of a fixed list, by how many it asked."""
    asked = sum(m.role == "assistant" for m in request.messages)
    idea = _idea_of(request.messages[0].content) if request.messages else "the idea"
    q = _INTERVIEW_QUESTIONS[asked % len(_INTERVIEW_QUESTIONS)]
    return f"Thanks. About '{idea}': {q}" if asked else f"Let's sharpen '{idea}'. {q}"


def from_json_schema(schema: dict[str, Any], idea: str) -> Any:
    """A valid value for any other schema (a stage added later), built from its JSON schema:
    a new stage needs its declaration, its prompt and its schema, not a branch here."""
    defs = schema.get("$defs", {})

    def value(s: dict[str, Any], name: str) -> Any:
        if "$ref" in s:
            return value(defs[s["$ref"].rsplit("/", 1)[-1]], name)
        if "anyOf" in s:
            return value(next(o for o in s["anyOf"] if o.get("type") != "null"), name)
        if "enum" in s:
            return s["enum"][0]
        t = s.get("type")
        if t == "object":
            return {k: value(v, k) for k, v in s.get("properties", {}).items()}
        if t == "array":
            return [value(s.get("items", {}), name) for _ in range(max(1, s.get("minItems", 1)))]
        if t in ("integer", "number"):
            low = s.get("minimum", 0)
            mid = (low + s.get("maximum", low + 10)) / 2
            return int(mid) if t == "integer" else mid
        if t == "boolean":
            return True
        return f"{name.replace('_', ' ')} for '{idea}'"

    return value(schema, "answer")


class StubProvider:
    """A provider that needs no network. `latency_s` simulates a provider's response time."""

    def __init__(self, name: str = "stub", model: str = "stub-1", latency_s: float = 0.0) -> None:
        self.name = name
        self.model = model
        self.latency_s = latency_s

    def _text(self, request: LLMRequest) -> str:
        user = "\n".join(m.content for m in request.messages if m.role == "user")
        if request.schema is not None:
            m = _SCHEMA.search(request.system)
            schema_name = m.group(1) if m else request.schema.__name__
            try:
                return json.dumps(fake_output(schema_name, request.system, user))
            except ValueError:
                return json.dumps(from_json_schema(request.schema.model_json_schema(), _idea_of(user)))
        if request.tags.get("stage") == "interview":
            return interview_question(request)
        idea = _idea_of(user if _IDEA.search(user) or not _IDEA.search(request.system)
                        else request.system)
        return f"Thinking about '{idea}': start with the customer, then the product."

    def complete(self, request: LLMRequest) -> Completion:
        started = time.perf_counter()
        if self.latency_s:
            time.sleep(self.latency_s)  # simulated provider latency
        text = self._text(request)
        return Completion(
            text=text,
            usage=Usage.estimated(request, len(text)),
            provider=self.name,
            model=self.model,
            latency_ms=int((time.perf_counter() - started) * 1000),
        )

    def stream(self, request: LLMRequest) -> Iterator[StreamItem]:
        text = self._text(request)
        if self.latency_s:
            time.sleep(self.latency_s)  # simulated provider latency
        for i in range(0, len(text), 40):
            yield text[i : i + 40]
        yield StreamEnd(Usage.estimated(request, len(text)), self.name, self.model)
