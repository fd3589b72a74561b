"""The Celery app: one per process, `app`, on which tasks/ registers its task at import.

Making it reads no setting and connects nowhere. Its settings are handed to it by the process's
entry point (`configure_app`: the API, the CLI, Flower, tests); `celery -A workers worker` asks
for `workers.app`, which is `app_from_environment()`: the settings from the environment, unless
some were handed in first.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from celery import Celery, signals

from masterplan.errors import ConfigError, SchemaBehindError
from masterplan.logs import setup_logging
from masterplan.recovery import Sweeper
from masterplan.settings import Settings, chain_summary, load_settings
from workers import runtime
from workers.config import celery_config


def _survive_redis_loss() -> None:
    """Keep a worker alive when Redis goes away while it holds unacknowledged messages.

    Once the lost connection is torn down, kombu 5.7's Redis channel still gets used — to ack
    a message that just finished, to put unacked ones back while closing — and fails with
    AttributeError ('NoneType' object has no attribute 'client' / 'hostname') instead of a
    connection error. That escapes Celery's connection-loss handling, the worker exits
    ("Unrecoverable error") and nothing is left to reconnect. Raised as the connection error it
    is, Celery logs it and reconnects. What was not acked stays in Redis's unacked set
    (redelivered after the visibility timeout) or was lost with Redis; either way the recovery
    sweep re-drives those stages from the database, and a redelivery of a finished stage is a
    no-op.
    """
    import redis
    from kombu.transport import redis as kombu_redis

    connparams = kombu_redis.Channel._connparams
    if getattr(connparams, "_tolerant", False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection was closed")
        return connparams(self, asynchronous=asynchronous)

    _connparams._tolerant = True  # type: ignore[attr-defined]
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]


app = Celery("masterplan", include=["tasks.pipeline", "tasks.interview"])
_lock = threading.Lock()
_configured = False


def configure_app(app: Celery, settings: Settings) -> None:
    """Hand settings to the app and to this process's worker runtime (entry points; the
    embedded mode and tests point it at other settings the same way)."""
    global _configured
    _survive_redis_loss()
    app.conf.update(celery_config(settings))
    runtime.configure(settings)
    _configured = True


def app_from_environment() -> Celery:
    """`app`, given the settings from the environment (and `.env`) unless it already has some:
    the way in for `celery -A workers ...`. A bad value stops the process with one line naming
    the variable."""
    with _lock:
        if not _configured:
            try:
                settings = load_settings()
            except ConfigError as exc:
                print(f"configuration error: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
            configure_app(app, settings)
    return app


@signals.worker_init.connect
def _check_at_start(**_: object) -> None:
    # Fail fast in the parent: a database that is behind stops the worker with the reason.
    settings = runtime.current_settings()
    setup_logging(settings)
    try:
        runtime.get_runtime()
    except (SchemaBehindError, ConfigError) as exc:
        logging.getLogger("masterplan.worker").critical("%s", exc)
        sys.exit(2)
    logging.getLogger("masterplan.worker").info("worker starting, %s", chain_summary(settings))


_sweepers: list[Sweeper] = []


def start_sweeper() -> Sweeper:
    """Every worker process sweeps: recovery needs no leader (SQL guards each re-drive)."""
    from tasks.pipeline import publish_or_fail_fast

    interval = runtime.get_runtime().settings.sweep_interval_s
    sweeper = Sweeper(runtime.get_runtime, publish_or_fail_fast, interval).start()
    _sweepers.append(sweeper)
    return sweeper


@signals.worker_ready.connect
def _sweep_while_ready(**_: object) -> None:
    start_sweeper()


@signals.worker_shutdown.connect
def _stop_sweeping(**_: object) -> None:
    while _sweepers:
        _sweepers.pop().stop()


@signals.worker_process_init.connect
def _per_child(**_: object) -> None:
    runtime.reset_after_fork()
    runtime.get_runtime()
