"""What a process needs to run jobs, built once at start-up from the settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from masterplan.db.session import check_schema, make_engine, make_sessionmaker, upgrade
from masterplan.leases import LeaseKeeper
from masterplan.llm.registry import build_router
from masterplan.llm.router import Router
from masterplan.settings import Settings

_FAKE_SERVER: Any = None


def make_redis(settings: Settings) -> Any:
    """The real Redis when REDIS_URL is set; otherwise one in-process fakeredis server."""
    if settings.redis_url:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # One quick retry, not redis-py's ten with back-off: when Redis is away a call is
        # deferred at once (and the bookkeeping after a reply skipped) instead of ~4 s each.
        return redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2,
                                    retry=Retry(NoBackoff(), 1),
                                    health_check_interval=30)
    import fakeredis

    global _FAKE_SERVER
    if _FAKE_SERVER is None:
        _FAKE_SERVER = fakeredis.FakeServer()
    return fakeredis.FakeRedis(server=_FAKE_SERVER)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: Any
    router: Router
    leases: LeaseKeeper

    def close(self) -> None:
        self.leases.stop()
        self.engine.dispose()
        try:
            self.redis.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def build_runtime(settings: Settings, *, migrate: bool = False) -> Runtime:
    """Engine, Redis, provider clients. `migrate` upgrades the schema (embedded mode); otherwise
    a database that is behind stops start-up with SchemaBehindError."""
    engine = make_engine(settings.database_url)
    if migrate:
        upgrade(engine)
    else:
        check_schema(engine)
    redis_client = make_redis(settings)
    sessions = make_sessionmaker(engine)
    return Runtime(settings, engine, sessions, redis_client, build_router(settings, redis_client),
                   LeaseKeeper(sessions, settings.stage_lease_s))
