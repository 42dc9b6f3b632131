"""The web process: REST API (``/api``, OpenAPI at ``/api/openapi.json``, docs at ``/api/docs``), the web UI
and ``/metrics``, in one FastAPI app served by uvicorn (``tideflow web``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from app import __version__, ui
from app.api import auth, errors, routes
from app.client import Tideflow
from app.config import Settings, load_settings
from app.metrics import Metrics


def create_app(settings: Settings | None = None, tideflow: Tideflow | None = None) -> FastAPI:
    """Build the app. Refuses to (``ConfigError``) when authentication is on and no token is set."""
    settings = settings or (tideflow.runtime.settings if tideflow else load_settings())
    auth.check_config(settings)
    tf = tideflow or Tideflow.from_env(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if tideflow is None:  # ours: close it
            tf.close()

    app = FastAPI(
        title="Tideflow", version=__version__, lifespan=lifespan,
        description="Durable DAG workflows on Celery. Authenticate with `Authorization: Bearer <token>`.",
        openapi_url="/api/openapi.json", docs_url="/api/docs", redoc_url=None,
    )
    app.state.settings = settings
    app.state.tideflow = tf
    errors.install(app)
    app.include_router(routes.public)
    app.include_router(routes.api)
    _mount_metrics(app, tf)
    ui.mount(app)
    return app


def _mount_metrics(app: FastAPI, tf: Tideflow) -> None:
    metrics = Metrics(tf.runtime)  # one per process: it keeps the cursors over the append-only tables

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(auth.require)])
    def prometheus(_request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)
