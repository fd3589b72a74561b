"""Recovery: the database drives every job to its end, whatever the broker lost.

`sweep` is idempotent and safe to run from any number of processes at once (every worker runs
it every SWEEP_INTERVAL_S; see workers/). Each pass:

1. hands back the stages whose lease ran out (their worker died), writing the call they had in
   flight to the ledger as `lost`, and publishes them again;
2. ends the open jobs past their deadline (`failed`, partial results kept), and admits the
   waiting jobs that free slots allow (masterplan/admission.py);
3. re-drives the jobs that stopped moving — nothing claimed, finished or due for STALL_AFTER_S
   and no live lease (a message lost with a flushed Redis, a publish that never happened): the
   ready stages are published again. One process wins each re-drive (an UPDATE guards it), a
   re-drive waits twice as long as the one before, and after MAX_REDRIVES the job fails with
   the reason instead of looping.

Publishing twice is harmless: a delivery of a stage that is finished or held is a no-op.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from masterplan import admission
from masterplan.db import queries as q
from masterplan.pipeline import advance, fail_job
from masterplan.runtime import Runtime

log = logging.getLogger(__name__)

# (job_id, stages) -> None; raises when the broker cannot take them.
Publish = Callable[[str, Iterable[str]], None]
# A stage that was running on a lost worker this many times fails instead of running again.
MAX_STAGE_ATTEMPTS = 5


@dataclass
class SweepReport:
    reaped: list[tuple[str, str]] = field(default_factory=list)
    overdue: list[str] = field(default_factory=list)
    redriven: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reaped or self.overdue or self.redriven or self.given_up)


def _publish_ready(rt: Runtime, s: Session, job_id: str, publish: Publish) -> None:
    ready = advance(s, rt.settings, job_id)
    if ready:
        publish(job_id, ready)


def sweep(rt: Runtime, publish: Publish) -> SweepReport:
    """One pass. Each job's decision and its publish share one transaction: a publish that fails
    (the broker is down) rolls the re-drive back, so it neither counts nor waits longer."""
    report = SweepReport()
    st = rt.settings
    with rt.sessions.begin() as s:
        report.reaped = q.reap_expired_leases(s, max_attempts=MAX_STAGE_ATTEMPTS)
    for job_id in dict.fromkeys(j for j, _ in report.reaped):
        with rt.sessions.begin() as s:
            _publish_ready(rt, s, job_id, publish)

    with rt.sessions() as s:
        overdue = q.overdue_jobs(s)
    for job_id in overdue:
        with rt.sessions.begin() as s:
            if fail_job(s, job_id, "job deadline passed"):
                report.overdue.append(job_id)

    # Slots a job's end could not hand out (its worker died first) go to waiting jobs now.
    for job_id in admission.release(rt):
        with rt.sessions.begin() as s:
            _publish_ready(rt, s, job_id, publish)
        report.admitted.append(job_id)

    with rt.sessions() as s:
        stalled = q.stalled_jobs(s, stall_s=st.stall_after_s)
    for job_id, redrives in stalled:
        with rt.sessions.begin() as s:
            q.lock_stage_states(s, job_id=job_id)  # lock order: stage rows, then the job
            if not q.mark_redrive(s, job_id=job_id, next_check_s=st.stall_after_s * 2 ** redrives):
                continue  # another process took it
            if redrives >= st.max_redrives:
                fail_job(s, job_id, f"no progress after {redrives} re-drives: its stages were "
                                     "published again and never ran")
                report.given_up.append(job_id)
                continue
            _publish_ready(rt, s, job_id, publish)
        report.redriven.append(job_id)
    if report:
        log.warning("recovery: %d lost stage(s) handed back, %d job(s) re-driven, %d past their "
                    "deadline, %d given up", len(report.reaped), len(report.redriven),
                    len(report.overdue), len(report.given_up))
    return report


class Sweeper:
    """Runs `sweep` every `interval_s` in a daemon thread (each worker process has one), on
    whatever runtime the process has at that moment."""

    def __init__(self, runtime: Callable[[], Runtime], publish: Publish, interval_s: float) -> None:
        self.runtime, self.publish, self.interval_s = runtime, publish, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recovery-sweep", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        # Workers started together do not sweep in lockstep.
        wait = self.interval_s * random.uniform(0.2, 1.0)
        while not self._stop.wait(wait):
            try:
                sweep(self.runtime(), self.publish)
            except Exception as exc:  # noqa: BLE001 - database or broker away: next pass
                log.warning("recovery sweep failed, will try again: %s: %s", type(exc).__name__, exc)
            wait = self.interval_s

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
