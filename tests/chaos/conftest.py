"""Chaos scenarios on real processes (bench/chaos.py, quick size): each test starts its own
redis-server, PostgreSQL database (or private cluster), fake providers, API and two workers
(with RabbitMQ as the broker: a vhost of its own on the local RabbitMQ), drives one fault, and
asserts what the system must show. About a minute each."""

from __future__ import annotations

import glob
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.chaos_measure import Result
from tests.conftest import unavailable


def pytest_configure(config: pytest.Config) -> None:
    # Registered here so that tests/chaos runs on its own with --strict-markers too; once only.
    if not any(line.startswith("slow:") for line in config.getini("markers")):
        config.addinivalue_line(
            "markers", "slow: starts real processes and runs for a minute or more (deselect "
            "with -m 'not slow')")


@pytest.fixture(scope="session")
def chaos_prerequisites() -> None:
    """redis-server and PostgreSQL's tools on this machine, the machine's PostgreSQL up."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server (the binary)", "not on PATH")
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        unavailable("PostgreSQL's initdb", "nothing under /usr/lib/postgresql/*/bin")
    import sqlalchemy as sa

    from bench.chaos_stack import PG_ADMIN_URL
    from masterplan.db.session import make_engine

    engine = make_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as c:
            c.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        unavailable(f"PostgreSQL at {PG_ADMIN_URL}", exc)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def rabbitmq() -> None:
    """The local RabbitMQ (127.0.0.1:5672, guest) up, and rabbitmqctl to make vhosts on it."""
    from bench.chaos_services import rabbitmq_unavailable

    why = rabbitmq_unavailable()
    if why is not None:
        unavailable("RabbitMQ at 127.0.0.1:5672", why)


@pytest.fixture
def run_quick(chaos_prerequisites: None, tmp_path: Path) -> Callable[..., Result]:
    """Run one scenario at the quick size on a broker (Redis unless told; a test on RabbitMQ
    asks for the `rabbitmq` fixture too); logs of every process under tmp_path."""
    from bench.chaos_run import Mode, log_dir_name, run
    from bench.chaos_scenarios import SCENARIOS

    def go(name: str, broker: str = "redis") -> Result:
        result = run(SCENARIOS[name], Mode(quick=True), tmp_path, broker)
        # named in every assertion message
        result.extra["logs"] = str(tmp_path / log_dir_name(name, broker))
        return result

    return go
