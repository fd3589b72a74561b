"""How a chaos scenario is run: its size (`Mode`), its parts (`Scenario`: drive the fault,
judge the properties, the brokers it means something on) and `run`, which starts its `Stack` on
one broker, drives, measures, judges and stops everything, whatever happened on the way."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.chaos_measure import Result
from bench.chaos_stack import BROKERS, Stack


@dataclass(frozen=True)
class Mode:
    quick: bool

    @property
    def name(self) -> str:
        return "quick" if self.quick else "full"

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full

    @property
    def latency_s(self) -> float:
        return self.pick(3.0, 1.0)

    @property
    def jobs(self) -> int:
        return self.pick(10, 4)

    @property
    def lost_worker_bound_s(self) -> float:
        """A lost worker's (or service's) work is redone within 60 s plus one job's three
        calls in sequence."""
        return 60 + 3 * self.latency_s

    @property
    def hard_timeout_s(self) -> float:
        return self.pick(600.0, 240.0)


Drive = Callable[[Stack, Result, Mode], None]
Judge = Callable[[Result, Mode], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    drive: Drive
    judge: Judge
    stack: Callable[[Mode], dict[str, Any]] = lambda m: {}
    # Where the fault means what it says: killing Redis is a broker outage only on Redis.
    brokers: tuple[str, ...] = BROKERS

    @property
    def about(self) -> str:
        return " ".join((self.drive.__doc__ or "").split())


def log_dir_name(scenario: str, broker: str = "redis") -> str:
    """<scenario> on Redis, <scenario>-<broker> otherwise."""
    return scenario if broker == "redis" else f"{scenario}-{broker}"


def run(scenario: Scenario, mode: Mode, log_root: Path, broker: str = "redis") -> Result:
    """Start the scenario's stack on `broker`, drive the fault, measure, judge; stop
    everything."""
    if broker not in scenario.brokers:
        raise ValueError(f"{scenario.name} is not run on {broker} (only {', '.join(scenario.brokers)})")
    r = Result(scenario.name, mode.name, broker)
    started = time.monotonic()
    try:
        with Stack(scenario.name, log_root / log_dir_name(scenario.name, broker),
                   latency_s=mode.latency_s, hard_timeout_s=mode.hard_timeout_s, broker=broker,
                   **scenario.stack(mode)) as st:
            try:
                scenario.drive(st, r, mode)
            except Exception as exc:  # noqa: BLE001 - recorded; the run is still measured
                r.error = _describe(exc)
            died = st.died()
            if died:
                r.extra["workers_died"] = died
            try:
                st.measure(r)
                # Judged even after a harness error: the table shows what did hold.
                scenario.judge(r, mode)
            except Exception as exc:  # noqa: BLE001
                r.error = r.error or f"measuring: {_describe(exc)}"
            if st.overrun:
                r.error = f"hard timeout ({mode.hard_timeout_s:.0f} s): every process killed"
    except Exception as exc:  # noqa: BLE001 - a service did not start
        r.error = r.error or f"start-up: {_describe(exc)}"
    r.wall_s = round(time.monotonic() - started, 1)
    return r


def _describe(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {str(exc)[:600]}{at}"
