"""The real API app on the test PostgreSQL database, through Starlette's TestClient, with API
keys of its own: jobs are counted per owner, so a test sees only what its own requests stored."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tests.conftest import REDIS_URL, make_settings


@dataclass
class Api:
    client: Any
    runtime: Any
    key: str
    other_key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def jobs_stored(self) -> int:
        """Rows in `jobs` (and so in `stage_runs`) that this app's key made."""
        from api.deps import owner_of
        from masterplan.db.models import Job

        with self.runtime.sessions() as s:
            return int(s.scalar(sa.select(sa.func.count()).select_from(Job)
                                .where(Job.owner == owner_of(self.key))) or 0)

    def post_raw(self, body: bytes, **headers: str) -> Any:
        return self.client.post("/v1/jobs", content=body,
                                headers=self.auth | {"content-type": "application/json"} | headers)


@contextmanager
def api_client(db_url: str, env: dict[str, str] | None = None) -> Iterator[Api]:
    from fastapi.testclient import TestClient

    from api.factory import create_app
    from masterplan.runtime import build_runtime

    key, other = f"key-{uuid.uuid4().hex}", f"key-{uuid.uuid4().hex}"
    settings = make_settings({"REDIS_URL": REDIS_URL, "DATABASE_URL": db_url,
                              "API_KEYS": f"{key},{other}", **(env or {})})
    rt = build_runtime(settings)
    try:
        # Server errors come back as responses, as a client would see them.
        with TestClient(create_app(runtime=rt), raise_server_exceptions=False) as client:
            yield Api(client, rt, key, other)
    finally:
        rt.close()
