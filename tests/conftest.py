"""Shared fixtures: real Redis and PostgreSQL (skipped on a laptop without them, never in CI),
settings built from explicit environments, and a real Celery worker consuming from Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

CI = os.environ.get("CI") == "true"
# Integration tests own Redis database 3: the broker, results and the limiter all live there,
# so nothing else on the server is touched.
TEST_REDIS_DB = 3


def _redis_url(db: int) -> str:
    base = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    return urlunsplit((base.scheme, base.netloc, f"/{db}", "", ""))


REDIS_URL = _redis_url(TEST_REDIS_DB)
# Every Redis key of this run (queues, buckets, cooldowns) starts with this prefix, so two test
# runs on one machine, or a run beside a real deployment, never see each other's keys.
RUN_PREFIX = f"mptest-{uuid.uuid4().hex[:8]}"
# The Celery app reads these when `workers` is first imported; child processes inherit them.
os.environ["REDIS_URL"] = REDIS_URL
os.environ["REDIS_KEY_PREFIX"] = RUN_PREFIX
os.environ.pop("CELERY_BROKER_URL", None)
os.environ.pop("CELERY_RESULT_BACKEND", None)


# Whole-process, fault and load tests: `make test-fast` leaves them out, `make test` (and CI) runs
# everything.
SLOW = ("tests/ops/", "tests/chaos/", "tests/bench/", "tests/integration/test_processes.py",
        "tests/integration/test_rate_limits.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(part in item.nodeid for part in SLOW):
            item.add_marker(pytest.mark.slow)


def unavailable(what: str, why: object) -> None:
    """A missing service fails the run in CI and skips the test on a laptop."""
    msg = f"{what} is not reachable ({why}); start it or see README 'Running the tests'"
    if CI:
        pytest.fail(msg)
    pytest.skip(msg)


def make_settings(env: dict[str, str] | None = None, **overrides: Any) -> Any:
    from masterplan.settings import load_settings

    # The in-process tests share one database and a few keys across the whole run: the per-key
    # limits and the interview share are off unless a test sets them
    # (tests/integration/test_fair_share.py does).
    return load_settings({"REDIS_KEY_PREFIX": RUN_PREFIX, **UNLIMITED_KEYS, **(env or {})},
                         env_file=None, **overrides)


UNLIMITED_KEYS = {"KEY_SUBMISSIONS_PER_MIN": "0", "KEY_MAX_JOBS_IN_FLIGHT": "100000",
                  # An interview in one test must not hold back the buckets of the next test's
                  # jobs (tests/integration/test_interviews.py sets its own share).
                  "INTERACTIVE_SHARE": "0"}


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS_URL}", exc)
    return REDIS_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    _forget_limits(client)
    yield client
    _forget_limits(client)
    client.close()


def _forget_limits(client: Any) -> None:
    # Only this run's buckets, cooldowns and learnt structured-output modes: flushing the
    # database would also drop kombu's queue bindings under a running worker.
    for pattern in (f"{RUN_PREFIX}:rl:*", f"{RUN_PREFIX}:cd:*", f"{RUN_PREFIX}:so:*"):
        keys = list(client.scan_iter(pattern, count=1000))
        if keys:
            client.delete(*keys)


def _pg_admin_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgresql", "postgres:")):
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, parts.netloc, "/postgres", "", ""))
    return "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    import sqlalchemy as sa

    from masterplan.db.session import make_engine

    admin_url = _pg_admin_url()
    try:
        admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        unavailable(f"PostgreSQL at {admin_url}", exc)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(admin_url)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run."""
    with fresh_pg_database("mp_test") as url:
        yield url


@pytest.fixture(scope="session")
def pg_migrated(pg_url: str) -> str:
    from masterplan.db.session import make_engine, upgrade

    engine = make_engine(pg_url)
    upgrade(engine)
    engine.dispose()
    return pg_url


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'masterplan.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """Both databases, each empty (for migration and query tests)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'any.db'}"
        return
    with fresh_pg_database("mp_any") as url:
        yield url


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A RabbitMQ virtual host of this run's own on the local broker, deleted afterwards."""
    import subprocess

    vhost = RUN_PREFIX
    try:
        for cmd in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
            subprocess.run(["rabbitmqctl", "-q", *cmd], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        unavailable("RabbitMQ at 127.0.0.1:5672", exc)
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)


@pytest.fixture(scope="session", autouse=True)
def _remove_this_runs_redis_keys() -> Iterator[None]:
    yield
    import redis

    for db in range(16):
        try:
            client = redis.Redis.from_url(_redis_url(db), socket_connect_timeout=1)
            keys = list(client.scan_iter(f"{RUN_PREFIX}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
        except redis.RedisError:
            return
