"""What a chaos scenario reports, computed from SQL and from the fake providers' own counters
after the run: job outcomes, duplicate stage outputs, calls paid twice, and the ledger's tokens
against the tokens the providers say they charged; and, from the workers' logs, what became of
a killed worker's unacknowledged messages."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

OPEN_STATUSES = ("queued", "running")


@dataclass
class Check:
    """One property a scenario must show, and what was seen."""

    name: str
    ok: bool
    detail: str


@dataclass
class Result:
    """One scenario's row of the table (plus what it measured on the way)."""

    scenario: str
    mode: str
    broker: str = "redis"
    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    unfinished: int = 0
    fault_at: float | None = None  # time.time() when the fault began
    fault_to_done_s: float | None = None  # from the fault to the last job finished
    duplicate_outputs: int = 0  # (job, stage) with more than one stored output
    paid_twice: int = 0  # (job, stage) with more than one successful call in the ledger
    ledger_tokens: int = 0
    provider_tokens: int = 0
    undelivered: int = 0  # answers the providers charged that never reached a client
    undelivered_tokens: int = 0
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    error: str | None = None  # the harness itself broke (a service did not start, ...)
    jobs_detail: list[dict[str, Any]] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    @property
    def holds(self) -> bool:
        return self.error is None and all(c.ok for c in self.checks)

    @property
    def broken(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def summary(self) -> str:
        """For assertion messages: the failed checks and the numbers."""
        lines = [f"{self.scenario} ({self.mode}, {self.broker}): {self.succeeded}/{self.jobs} succeeded, "
                 f"{self.failed} failed, {self.unfinished} unfinished, fault->done "
                 f"{self.fault_to_done_s} s, extra {self.extra}"]
        if self.error:
            lines.append(f"harness error: {self.error}")
        lines += [f"  FAILED {c.name}: {c.detail}" for c in self.broken]
        open_jobs = [j for j in self.jobs_detail if j["status"] != "succeeded"][:5]
        lines += [f"  job {j['id']} {j['status']}: {(j['error'] or '')[:300]}" for j in open_jobs]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["holds"] = self.holds
        return d


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def stage_table(engine: sa.Engine) -> tuple[str, str] | None:
    """(table, stage column) of the per-stage results: `stage_runs`, or the older
    `persona_runs` keyed by persona."""
    tables = _tables(engine)
    if "stage_runs" in tables:
        return "stage_runs", "stage"
    if "persona_runs" in tables:
        return "persona_runs", "persona"
    return None


def measure_sql(db_url: str, result: Result) -> None:
    """Fill the SQL columns of `result`. Every job in the scenario's database is counted (the
    database is the scenario's own)."""
    from masterplan.db.session import make_engine

    engine = make_engine(db_url)
    try:
        with engine.connect() as c:
            jobs = c.execute(sa.text(
                "SELECT id, status, error, created_at, finished_at FROM jobs ORDER BY created_at"
            )).mappings().all()
            result.jobs_detail = [
                {"id": j["id"], "status": j["status"], "error": j["error"],
                 "finished_at": _epoch(j["finished_at"])} for j in jobs]
            result.jobs = len(jobs)
            result.succeeded = sum(j["status"] == "succeeded" for j in jobs)
            result.failed = sum(j["status"] == "failed" for j in jobs)
            result.unfinished = sum(j["status"] in OPEN_STATUSES for j in jobs)
            finished = [_epoch(j["finished_at"]) for j in jobs if j["finished_at"] is not None]
            if result.fault_at is not None and finished and not result.unfinished:
                result.fault_to_done_s = round(max(finished) - result.fault_at, 2)
            table = stage_table(engine)
            if table is not None:
                name, col = table
                result.duplicate_outputs = int(c.execute(sa.text(
                    f"SELECT count(*) FROM (SELECT job_id, {col} FROM {name} "
                    f"WHERE output IS NOT NULL GROUP BY job_id, {col} HAVING count(*) > 1) d"
                )).scalar_one())
            result.paid_twice = int(c.execute(sa.text(
                "SELECT count(*) FROM (SELECT job_id, stage FROM llm_calls WHERE outcome = 'ok' "
                "GROUP BY job_id, stage HAVING count(*) > 1) d")).scalar_one())
            result.ledger_tokens = int(c.execute(sa.text(
                "SELECT coalesce(sum(input_tokens + output_tokens), 0) FROM llm_calls"
            )).scalar_one())
    finally:
        engine.dispose()


def measure_fakes(stats: dict[str, dict[str, Any]], result: Result) -> None:
    """The providers' side of the bill, summed over the fakes."""
    result.provider_tokens = sum(int(s["tokens_admitted"]) for s in stats.values())
    result.undelivered = sum(int(s.get("undelivered", 0)) for s in stats.values())
    result.undelivered_tokens = sum(int(s.get("undelivered_tokens", 0)) for s in stats.values())
    # Charged, delivered, and still not on the ledger (a worker died between answer and commit,
    # or a write was lost): should be 0 everywhere.
    unaccounted = result.provider_tokens - result.undelivered_tokens - result.ledger_tokens
    if unaccounted:
        result.extra["unaccounted_tokens"] = unaccounted
    result.extra["provider_requests"] = {n: s.get("received") for n, s in stats.items()}
    faults = {n: {k: s["faults"][k] for k in ("error", "truncated")}
              for n, s in stats.items() if s.get("faults", {}).get("error_rate")
              or s.get("faults", {}).get("truncate_rate")}
    if faults:
        result.extra["faults_injected"] = faults


def _epoch(dt: datetime | None) -> float:
    if dt is None:
        return 0.0
    if dt.tzinfo is None:  # stored as UTC
        from datetime import UTC

        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


# `celery.worker.strategy` / `celery.app.trace` lines of a worker's log (masterplan's format).
_TASK_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ celery\.[\w.]+: "
                        r"Task masterplan\.stage\[([0-9a-f-]+)\] (\w+)(.*)$", re.M)


def _task_events(log: str) -> list[tuple[float, str, str, str]]:
    """(epoch, task id, event, rest of the line): received / succeeded / retry / raised ..."""
    out = []
    for m in _TASK_LINE.finditer(log):
        at = time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000
        out.append((at, m[3], m[4], m[5]))
    return out


def redelivery(killed_log: str, other_log: str, fault_at: float) -> dict[str, Any]:
    """What the other worker got of the killed one's unacknowledged messages, from their logs.

    `held`: messages the killed worker had received and not finished (running or prefetched,
    countdowns included); `redelivered`: how many of those the other worker received again
    (same task id) after the kill, the delays from the kill, and what each redelivery came to
    (`busy`: the stage was still claimed by the dead worker's lease, a no-op; `succeeded`: it
    had not started there). On Redis they wait for the visibility timeout (1 h) instead: the
    recovery sweep re-publishes those stages under new task ids."""
    last: dict[str, str] = {}
    for _, task_id, event, _rest in _task_events(killed_log):
        last[task_id] = event
    held = {t for t, event in last.items() if event == "received"}
    got: dict[str, float] = {}
    outcome: dict[str, str] = {}
    for at, task_id, event, rest in _task_events(other_log):
        if task_id not in held or at < fault_at - 0.5:
            continue
        if event == "received":
            got.setdefault(task_id, at)
        elif task_id in got and task_id not in outcome:
            status = re.search(r"'status': '(\w+)'", rest)
            outcome[task_id] = status[1] if status else event
    delays = sorted(round(max(0.0, got[t] - fault_at), 3) for t in got)
    out: dict[str, Any] = {"held": len(held), "redelivered": len(got),
                           "delays_s": delays, "outcomes": dict(Counter(outcome.values()))}
    summary = f"{len(got)}/{len(held)}"
    if delays:
        summary += f" in {delays[0]:.2f}-{delays[-1]:.2f} s"
    if outcome:
        summary += " (" + ", ".join(f"{k} {v}" for k, v in sorted(out["outcomes"].items())) + ")"
    out["summary"] = summary
    return out
