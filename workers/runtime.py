"""One Runtime per worker process: settings, database engine, Redis, provider clients.

Built in the worker's start-up hooks (after fork for prefork), never at import and never per task.
"""

from __future__ import annotations

import logging
import threading

from masterplan.runtime import Runtime, build_runtime
from masterplan.settings import Settings, chain_summary, load_settings

log = logging.getLogger("masterplan.worker")
_lock = threading.Lock()
_runtime: Runtime | None = None
_settings: Settings | None = None


def configure(settings: Settings) -> None:
    global _settings
    _settings = settings


def current_settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


def set_runtime(runtime: Runtime | None) -> None:
    """Install a runtime built elsewhere (the embedded mode shares one with the API)."""
    global _runtime
    _runtime = runtime


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                settings = current_settings()
                _runtime = build_runtime(settings)
                log.info("worker ready, %s", chain_summary(settings))
    return _runtime


def reset_after_fork() -> None:
    """A forked child must not share its parent's sockets."""
    global _runtime
    _runtime = None
