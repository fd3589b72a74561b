"""The Celery app, its configuration and the per-process runtime.

Importing `workers` reads no setting. `celery -A workers worker` looks up `workers.app`: the
process's one app (workers/celery_app.py), given the settings from the environment at that
moment unless an entry point handed it some first (`configure_app`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    app: Celery
    celery: Celery


def __getattr__(name: str) -> Any:
    # Celery's `-A workers` finds `app` (or `celery`) as an attribute of the package.
    if name in ("app", "celery"):
        from workers.celery_app import app_from_environment

        return app_from_environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
