"""Pydantic output schemas for personas, synthesis and critique."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Assumption(_Out):
    statement: str
    confidence: float = Field(ge=0, le=1, description="0 = a guess, 1 = certain")


class Risk(_Out):
    risk: str
    severity: str = Field(description="low | medium | high")
    mitigation: str


class PersonaOutput(_Out):
    """What every specialist persona returns."""

    summary: str = Field(min_length=1)
    key_findings: list[str] = Field(min_length=1)
    assumptions: list[Assumption]
    risks: list[Risk]
    recommendations: list[str] = Field(min_length=1)
    open_questions: list[str]


class Component(_Out):
    name: str
    responsibility: str


class Phase(_Out):
    name: str
    duration_weeks: int = Field(ge=0)
    goals: list[str]


class Masterplan(_Out):
    """The synthesis: an architecture masterplan."""

    executive_summary: str = Field(min_length=1)
    components: list[Component] = Field(min_length=1)
    data_flow: str
    stack: list[str]
    roadmap: list[Phase] = Field(min_length=1)
    risks: list[Risk]
    success_metrics: list[str]


class Critique(_Out):
    """The devil's advocate's verdict."""

    strongest_objections: list[str] = Field(min_length=1)
    kill_criteria: list[str]
    verdict: str = Field(description="go | pivot | no-go")
    score: int = Field(ge=0, le=10, description="0 = kill it, 10 = build it now")
    reasoning: str


SCHEMAS: dict[str, type[BaseModel]] = {
    cls.__name__: cls for cls in (PersonaOutput, Masterplan, Critique)
}
