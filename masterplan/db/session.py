"""Engine and session factory, and the start-up check that the schema is current."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from masterplan.errors import SchemaBehindError

MIGRATIONS = Path(__file__).resolve().parent.parent.parent / "migrations"


def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3 here."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets the API read while a worker thread writes; FKs are off by default in SQLite.
            cur = dbapi_conn.cursor()
            if not url.endswith(":memory:"):
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
            # Transactions are begun below, not by the driver.
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):  # type: ignore[no-untyped-def]
            # Take the write lock when a transaction begins: a transaction that reads a job's
            # stages and then writes must see every commit before it (PostgreSQL's row locks
            # give the same), or two finishing stages could each miss the other.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # Enough connections for a threads-pool worker of a few dozen concurrent tasks.
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def is_db_unavailable(exc: BaseException) -> bool:
    """The database cannot be reached right now (down, restarting, connection cut, pool
    exhausted, SQLite locked): worth retrying, unlike a bad statement."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(engine_url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine_url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """`alembic upgrade head` (or to `revision`) on this engine (the embedded mode, tests)."""
    from alembic import command

    cfg = _alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def check_schema(engine: Engine) -> None:
    """Refuse to run against a database that is behind the code's migrations."""
    head, current = head_revision(), current_revision(engine)
    if current != head:
        where = engine.url.render_as_string(hide_password=True)
        raise SchemaBehindError(
            f"database {where} is at revision {current or 'none (empty)'}, the code needs {head}: "
            "run `alembic upgrade head`"
        )
