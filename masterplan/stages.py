"""The pipeline's stages, declared once.

Everything else derives from `STAGES`: the rows a job gets (`stage_runs`), which task runs
when (`ready`), the queue a stage's task goes to, the API's shape and its sort order, the demo.

A stage is ready when every stage it needs has finished; it may run when at least `min_ok` of
them succeeded (`None`: all of them). A stage that may not run fails the job with the reasons of
the stages it needed. The job succeeds when its last stage succeeds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from masterplan.llm.base import LLMRequest
from masterplan.personas import (
    PERSONA_KEYS,
    PERSONAS,
    critique_request,
    persona_request,
    synthesis_request,
)
from masterplan.settings import Settings

PERSONA_QUEUE = "personas"
PIPELINE_QUEUE = "pipeline"
INTERACTIVE_QUEUE = "interactive"  # interview turns (tasks/interview.py)


class Kind(StrEnum):
    PERSONA = "persona"
    SYNTHESIS = "synthesis"
    CRITIQUE = "critique"


@dataclass(frozen=True)
class JobInput:
    idea: str
    context: dict[str, Any] | None


# (the job's input, the outputs of the stages it needs that succeeded, the settings) -> request
RequestBuilder = Callable[[JobInput, Mapping[str, dict[str, Any]], Settings], LLMRequest]


@dataclass(frozen=True)
class StageDef:
    name: str
    title: str
    kind: Kind
    build: RequestBuilder
    needs: tuple[str, ...] = ()
    queue: str = PIPELINE_QUEUE
    # At least this many of `needs` must have succeeded (None: all); read from the settings.
    min_ok: Callable[[Settings], int] | None = None

    def required(self, settings: Settings) -> int:
        return len(self.needs) if self.min_ok is None else self.min_ok(settings)


def _persona(key: str) -> RequestBuilder:
    def build(job: JobInput, _: Mapping[str, dict[str, Any]], settings: Settings) -> LLMRequest:
        return persona_request(key, job.idea, job.context, max_tokens=settings.persona_max_tokens)
    return build


def _synthesis(job: JobInput, found: Mapping[str, dict[str, Any]], settings: Settings) -> LLMRequest:
    return synthesis_request(job.idea, job.context, dict(found),
                             max_tokens=settings.synthesis_max_tokens)


def _critique(job: JobInput, found: Mapping[str, dict[str, Any]], settings: Settings) -> LLMRequest:
    return critique_request(job.idea, found["synthesis"], max_tokens=settings.critique_max_tokens)


STAGES: tuple[StageDef, ...] = (
    *(StageDef(p.key.value, p.title, Kind.PERSONA, _persona(p.key.value), queue=PERSONA_QUEUE)
      for p in PERSONAS),
    StageDef("synthesis", "Synthesis", Kind.SYNTHESIS, _synthesis, needs=PERSONA_KEYS,
             min_ok=lambda s: s.min_personas),
    StageDef("critique", "Devil's advocate", Kind.CRITIQUE, _critique, needs=("synthesis",)),
)


class Pipeline:
    """An ordered set of stages (a test may build one with an extra stage)."""

    def __init__(self, stages: tuple[StageDef, ...]) -> None:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        for s in stages:
            unknown = [n for n in s.needs if n not in names[: names.index(s.name)]]
            if unknown:
                raise ValueError(f"stage {s.name!r} needs {unknown}, not declared before it")
        self.stages = stages
        self.names = tuple(names)
        self.order = {n: i for i, n in enumerate(names)}
        self._by_name = {s.name: s for s in stages}
        self.last = stages[-1].name

    def __getitem__(self, name: str) -> StageDef:
        try:
            return self._by_name[name]
        except KeyError:
            raise LookupError(f"unknown stage {name!r}; expected one of {', '.join(self.names)}") from None

    def of_kind(self, kind: Kind) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages if s.kind is kind)


PIPELINE = Pipeline(STAGES)
_current = PIPELINE


def pipeline() -> Pipeline:
    """The pipeline jobs run on (one per process)."""
    return _current


def use_pipeline(p: Pipeline) -> None:
    """Install another pipeline (tests that declare an extra stage)."""
    global _current
    _current = p
