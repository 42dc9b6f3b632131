"""The UI's routes. They check authentication and serve the pages (Jinja templates in ``templates/``, each
extending ``layout.html``, the shell with the header; rendered once, they have no per-request data but the login
form's); the login form exchanges a token (a named one, or one of ``TIDEFLOW_API_TOKEN``) for the signed session
cookie the API accepts (:mod:`app.api.auth`)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader
from starlette.concurrency import run_in_threadpool

from app.api import auth
from app.api.schemas import MAX_ID
from app.config import Settings
from app.definitions import NAME_RE

STATIC = Path(__file__).resolve().parent / "static"
TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_FORM_BYTES = 8 * 1024

#: every page: scripts and styles only from this origin (no inline code), not framable, not cached
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a local path only (one leading "/", no "//" nor a backslash that browsers
    read as one, no control characters); anything else goes to the runs list."""
    if (not value or not value.startswith("/") or value.startswith("//") or "\\" in value
            or any(ord(c) < 32 or ord(c) == 127 for c in value)):
        return "/"
    return value


#: the pages' templates: trusted files of this package, every value escaped (``autoescape``)
_templates = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True,
                         keep_trailing_newline=True)


@functools.cache
def _rendered(name: str) -> str:
    return _templates.get_template(name).render()


def _page(name: str) -> HTMLResponse:
    return HTMLResponse(_rendered(name), headers=PAGE_HEADERS)


def _guarded(request: Request, name: str) -> Response:
    if auth.authenticated(request):
        return _page(name)
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(here, safe='')}", status_code=303)


def _login_page(next_url: str, error: str | None = None, status: int = 200) -> HTMLResponse:
    body = _templates.get_template("login.html").render(next=safe_next(next_url), error=error)
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)


async def _form(request: Request) -> dict[str, str]:
    """The fields of a small ``application/x-www-form-urlencoded`` body (first value of each)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
    return {key: values[0] for key, values in fields.items() if values}


@router.get("/")
def runs_page(request: Request) -> Response:
    return _guarded(request, "runs.html")


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: Annotated[int, PathParam(ge=1, le=MAX_ID)]) -> Response:
    return _guarded(request, "run.html")


@router.get("/workflows")
def workflows_page(request: Request) -> Response:
    return _guarded(request, "workflows.html")


@router.get("/workflows/{name}")
def workflow_page(request: Request, name: Annotated[str, PathParam(pattern=NAME_RE)]) -> Response:
    return _guarded(request, "workflow.html")


@router.get("/schedules")
def schedules_page(request: Request) -> Response:
    return _guarded(request, "schedules.html")


@router.get("/login")
def login_form(request: Request, next: str = "/") -> Response:
    if auth.authenticated(request):
        return RedirectResponse(safe_next(next), status_code=303)
    return _login_page(next)


@router.post("/login")
async def login(request: Request) -> Response:
    settings = _settings(request)
    form = await _form(request)
    target = safe_next(form.get("next"))
    if not settings.api_auth:
        return RedirectResponse(target, status_code=303)
    token = form.get("token", "").strip()
    try:
        ident = await run_in_threadpool(auth.sign_in, request, token)  # a database read: off the event loop
    except auth.TooManyFailures as exc:
        page = _login_page(target, f"Too many failed sign-ins; try again in {exc.retry_after} s.", status=429)
        page.headers["Retry-After"] = str(exc.retry_after)
        return page
    except auth.Unauthorized:
        return _login_page(target, "That token is not valid.", status=401)
    response = RedirectResponse(target, status_code=303)
    # a signed session naming the token (its digest), never the secret itself; see app/api/auth.py
    response.set_cookie(auth.COOKIE, auth.make_session(settings, ident.digest), path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https",
                        max_age=settings.session_max_age_seconds)
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response
