"""Fair share across API keys: which submitted jobs may run now.

A job is *in flight* from its admission until it ends. A key has at most KEY_MAX_JOBS_IN_FLIGHT
jobs in flight and the system at most MAX_JOBS_IN_FLIGHT; a job beyond either waits `queued` in
the database and nothing of it is published. When a job ends, and on every recovery sweep,
`release` hands the free slots out one at a time, each to the key with the fewest jobs in flight
(the key whose waiting job is oldest breaks a tie; within a key, first come first served). So a
key with one job never waits behind another key's thousand: at worst for one job to end.

A job admitted while its key had nothing else in flight runs in the "first" lane, the others in
"more". While another key has open jobs or submitted one in the last FAIR_WINDOW_S, the provider
buckets keep FAIR_HEADROOM of their capacity for the first lane (masterplan/ratelimit/), so a
key's burst cannot drain a provider for everyone else either; a single tenant keeps the whole
bucket. (The first newcomer after a single-tenant spell finds the bucket drained, and waits for
its own calls' tokens to refill; the ones after it find the headroom.) Interview turns get a
share the same way (INTERACTIVE_SHARE, see `headroom`).

Submissions are limited per key too (KEY_SUBMISSIONS_PER_MIN, a sliding minute).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from masterplan.db import queries as q
from masterplan.db.models import utcnow
from masterplan.runtime import Runtime
from masterplan.settings import Settings

log = logging.getLogger(__name__)
FIRST, MORE = "first", "more"
WINDOW_S = 60.0


@dataclass(frozen=True)
class Slot:
    """What a new submission gets: a place in flight now (with its lane), or a wait."""

    admitted: bool
    lane: str = FIRST


# Whether other keys compete, and whether an interview is on, is asked at most this often per
# process (two small queries in one transaction).
CONTENDED_TTL_S = 1.0
_competition: tuple[float, bool, bool] = (-CONTENDED_TTL_S, False, False)
_MAX_HEADROOM = 0.9


def headroom(rt: Runtime, lane: str) -> float:
    """The share of each bucket a masterplan call of this lane must leave untouched: other
    keys' first jobs get FAIR_HEADROOM from a key's further jobs, and interview turns get
    INTERACTIVE_SHARE from every job while an interview was active in INTERACTIVE_WINDOW_S."""
    global _competition
    s = rt.settings
    fair = s.fair_headroom if lane == MORE else 0.0
    if not fair and not s.interactive_share:
        return 0.0
    at, contended, interviewing = _competition
    now = time.monotonic()
    if now - at >= CONTENDED_TTL_S:
        with rt.sessions() as session:
            contended = bool(fair) and q.active_owners(
                session, since=utcnow() - timedelta(seconds=s.fair_window_s), at_least=2)
            interviewing = bool(s.interactive_share) and q.interviews_active(
                session, since=utcnow() - timedelta(seconds=s.interactive_window_s))
        _competition = (now, contended, interviewing)
    share = (fair if contended else 0.0) + (s.interactive_share if interviewing else 0.0)
    return min(share, _MAX_HEADROOM)


def retry_after_s(s: Session, settings: Settings, owner: str) -> int | None:
    """Seconds until the owner may submit again, or None while under KEY_SUBMISSIONS_PER_MIN."""
    limit = settings.key_submissions_per_min
    if not limit:
        return None
    nth = q.nth_recent_submission(s, owner=owner, n=limit, window_s=WINDOW_S)
    if nth is None:
        return None
    if nth.tzinfo is None:  # SQLite returns naive datetimes
        nth = nth.replace(tzinfo=utcnow().tzinfo)
    return max(1, math.ceil(WINDOW_S - (utcnow() - nth).total_seconds()))


def slot_for_new_job(s: Session, settings: Settings, owner: str) -> Slot:
    """In the transaction that stores a new job, before its insert: may it go in flight at once?
    Only when nothing waits (else `release` decides, in fair order) and both caps have room."""
    q.lock_admission(s)
    mine, total, waiting = q.in_flight(s, owner=owner)
    cap = settings.max_jobs_in_flight
    if waiting or mine >= settings.key_max_jobs_in_flight or (cap is not None and total >= cap):
        return Slot(False)
    return Slot(True, FIRST if mine == 0 else MORE)


def plan(in_flight: dict[str, int], waiting: list[tuple[str, str]], *, per_key: int,
         total_cap: int | None) -> list[tuple[str, str]]:
    """Pure: which waiting jobs to admit, and their lanes. `waiting` is (job_id, owner), oldest
    first; `in_flight` counts each owner's jobs in flight."""
    queues: dict[str, list[str]] = {}
    for job_id, owner in waiting:
        queues.setdefault(owner, []).append(job_id)
    running = dict(in_flight)
    total = sum(running.values())
    admitted: list[tuple[str, str]] = []
    while total_cap is None or total < total_cap:
        ready = [o for o, jobs in queues.items() if jobs and running.get(o, 0) < per_key]
        if not ready:
            break
        # dicts keep insertion order, and `waiting` is oldest first: the tie goes to the key
        # whose waiting job is oldest.
        owner = min(ready, key=lambda o: running.get(o, 0))
        admitted.append((queues[owner].pop(0), FIRST if running.get(owner, 0) == 0 else MORE))
        running[owner] = running.get(owner, 0) + 1
        total += 1
    return admitted


def release(rt: Runtime) -> list[str]:
    """Admit the waiting jobs that free slots allow, in fair order; returns their ids (the caller
    publishes them; one it fails to publish is re-driven by the sweep)."""
    st = rt.settings
    with rt.sessions.begin() as s:
        if not q.any_waiting(s):
            return []
        q.lock_admission(s)
        chosen = plan(q.open_by_owner(s), q.waiting_jobs(s, per_owner=st.key_max_jobs_in_flight),
                      per_key=st.key_max_jobs_in_flight, total_cap=st.max_jobs_in_flight)
        admitted: list[str] = []
        for lane in (FIRST, MORE):
            admitted += q.admit_jobs(s, job_ids=[j for j, ln in chosen if ln == lane], lane=lane,
                                     deadline_s=st.job_deadline_s)
    if admitted:
        log.info("admitted %d waiting job(s): %s", len(admitted), ", ".join(admitted))
    return admitted


def release_quietly(rt: Runtime) -> list[str]:
    """`release` for a caller that has already done its own work (a job just ended): a failure
    here is left to the next sweep."""
    try:
        return release(rt)
    except Exception as exc:  # noqa: BLE001 - the sweep admits what this could not
        log.warning("could not admit waiting jobs now (%s: %s); the recovery sweep will",
                    type(exc).__name__, exc)
        return []
