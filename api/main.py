"""The FastAPI app: `uvicorn api.main:app` (settings from the environment)."""

from __future__ import annotations

from api.factory import create_app

app = create_app()
