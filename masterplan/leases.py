"""The heartbeat of running stages: one thread per process renews the leases it holds.

A stage is claimed under a short lease (STAGE_LEASE_S) instead of a lease as long as the longest
task: while the process lives, its leases are renewed every third of their length; when it dies
(SIGKILL, OOM, a lost machine), they run out within one lease and the sweep hands the stage to
another worker. One UPDATE per process per renewal, however many calls are in flight.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker

from masterplan.db import queries as q

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, sessions: sessionmaker[Session], lease_s: float) -> None:
        self.sessions = sessions
        self.lease_s = lease_s
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    @contextmanager
    def hold(self, claim_id: str) -> Iterator[None]:
        """Keep this claim's lease alive while the block runs."""
        with self._lock:
            self._held[claim_id] = self._held.get(claim_id, 0) + 1
            if self._thread is None or not self._thread.is_alive():
                self._stopped = False
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                n = self._held.pop(claim_id, 1) - 1
                if n > 0:
                    self._held[claim_id] = n

    def held(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def renew(self) -> int:
        claims = self.held()
        if not claims:
            return 0
        with self.sessions.begin() as s:
            return q.renew_leases(s, claim_ids=claims, lease_s=self.lease_s)

    def _run(self) -> None:
        while not self._wake.wait(self.lease_s / 3):
            if self._stopped:
                return
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - the database may be away; try again next beat
                log.warning("could not renew %d stage lease(s): %s", len(self.held()), exc)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self._wake.clear()
