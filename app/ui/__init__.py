"""The web UI: static pages (plain HTML, CSS and JavaScript, no build step) served by the API's FastAPI app.

The pages' scripts read everything from the REST API (``/api``) with the browser's session cookie; the
routes here only check authentication and serve the pages (:mod:`app.ui.pages`: Jinja templates in
``templates/`` sharing one shell, ``layout.html``). Assets live in ``static/``.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.ui.pages import STATIC, router


def mount(app: FastAPI) -> None:
    """Add the pages (``/``, ``/runs/{id}``, ``/workflows``, ``/workflows/{name}``, ``/login``, ``/logout``) and the
    assets (``/static``)."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="ui-static")
