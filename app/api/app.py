"""The web process: REST API (``/api``, OpenAPI at ``/api/openapi.json``, docs at ``/api/docs``), the web UI
and ``/metrics``, in one FastAPI app served by uvicorn (``tideflow web``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from app import __version__, ui
from app.api import auth, errors, routes
from app.client import Tideflow
from app.config import Settings, load_settings
from app.metrics import Metrics


def create_app(settings: Settings | None = None, tideflow: Tideflow | None = None) -> FastAPI:
    """Build the app. Refuses to (``ConfigError``) when authentication is on and neither TIDEFLOW_API_TOKEN nor
    TIDEFLOW_SECRET_KEY is set."""
    settings = settings or (tideflow.runtime.settings if tideflow else load_settings())
    auth.check_config(settings)  # before connecting to anything
    tf = tideflow or Tideflow.from_env(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if tideflow is None:  # ours: close it
            tf.close()

    app = FastAPI(
        title="Tideflow", version=__version__, lifespan=lifespan,
        description="Durable DAG workflows on Celery. Authenticate with `Authorization: Bearer <token>` (a named "
                    "token from `tideflow token add`, or TIDEFLOW_API_TOKEN): viewer tokens read, operator "
                    "tokens also start and control runs, admin tokens also register workflows.",
        openapi_url="/api/openapi.json", docs_url=None, redoc_url=None,
    )
    app.state.settings = settings
    app.state.tideflow = tf
    auth.install(app, settings)
    errors.install(app)
    app.include_router(routes.public)
    app.include_router(routes.api)
    _mount_metrics(app, tf)
    ui.mount(app)
    _mount_docs(app)
    return app


#: Swagger UI's assets, vendored in app/ui/static/swagger (swagger-ui-dist 5, see its README.txt): offline docs
SWAGGER = "/static/swagger"


def _mount_docs(app: FastAPI) -> None:
    """``/api/docs``: Swagger UI from this package, not a CDN (FastAPI's "Custom Docs UI Static Assets"); public,
    like the OpenAPI document it renders. No validator badge (it would call validator.swagger.io)."""

    @app.get("/api/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/api/openapi.json", title="Tideflow API",
            swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js", swagger_css_url=f"{SWAGGER}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False})


def _mount_metrics(app: FastAPI, tf: Tideflow) -> None:
    metrics = Metrics(tf.runtime)  # one per process: it keeps the cursors over the append-only tables

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(auth.require)])
    def prometheus(_request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)
