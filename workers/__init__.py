"""The Celery app, its configuration and the per-process runtime.

`celery -A workers worker` loads `workers.app` with settings from the environment.
"""

from __future__ import annotations

import sys

from masterplan.errors import ConfigError
from masterplan.settings import load_settings

try:
    _settings = load_settings()
except ConfigError as _exc:  # a bad value stops start-up with one line naming the variable
    print(f"configuration error: {_exc}", file=sys.stderr)
    raise SystemExit(2) from None

from workers.celery_app import create_app

app = create_app(_settings)
celery = app

__all__ = ["app", "celery"]
