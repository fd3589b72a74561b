"""Build the API app: settings checked, runtime built once at start-up, routes mounted."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors, metrics, openapi, web
from api.middleware import BodyLimit, PathGuard
from api.routes import calls, events, health, interviews, jobs, providers
from masterplan.errors import ConfigError, SchemaBehindError
from masterplan.logs import setup_logging
from masterplan.runtime import Runtime, build_runtime
from masterplan.settings import Settings, chain_summary, load_settings

log = logging.getLogger("masterplan.api")


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or (runtime.settings if runtime else _settings_or_exit())
    keys = settings.api_key_set()
    if not keys and not settings.auth_disabled:
        print("configuration error: API_KEYS is empty; set API_KEYS=key1,key2 "
              "(or AUTH_DISABLED=true to run without authentication)", file=sys.stderr)
        raise SystemExit(2)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        if owned:
            setup_logging(settings)
            # The Celery app publishes the API's tasks: it gets the same settings.
            from workers.celery_app import app as celery_app
            from workers.celery_app import configure_app

            configure_app(celery_app, settings)
            try:
                app.state.runtime = build_runtime(settings)
            except SchemaBehindError as exc:
                log.critical("%s", exc)
                raise SystemExit(2) from None
        else:
            app.state.runtime = runtime
        if settings.auth_disabled:
            log.warning("authentication is DISABLED (AUTH_DISABLED=true): every caller is 'anonymous'")
        log.info("api ready, %s", chain_summary(settings))
        yield
        if owned:
            app.state.runtime.close()

    docs = settings.docs_enabled
    app = FastAPI(title="Masterplan", version="0.1.0", lifespan=lifespan,
                  description=openapi.DESCRIPTION, openapi_url="/openapi.json" if docs else None,
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None)
    app.state.api_keys = keys
    errors.install(app)
    metrics.install(app)
    for r in (health.router, jobs.router, events.router, interviews.router, providers.router):
        app.include_router(r)
    app.include_router(calls.router)
    web.install(app)  # the page: /, /jobs/{id}, its fragments, /static
    openapi.install(app, settings)
    # The last added runs first: the body cap wraps everything, then the path check, both
    # ahead of routing and parsing.
    app.add_middleware(PathGuard)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    return app
