"""Token authentication for the API, the UI and /metrics.

A client sends ``Authorization: Bearer <token>``; the browser UI keeps the token in an HttpOnly,
SameSite=Strict cookie set by ``POST /login``. A cookie-authenticated request that changes something must
also carry the ``X-Tideflow-CSRF`` header (a cross-site form cannot set it). Tokens come from
``TIDEFLOW_API_TOKEN`` (comma separated, to rotate); ``TIDEFLOW_API_AUTH=off`` is the only way to turn
checking off, for local use.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from app.config import Settings
from app.errors import TideflowError

COOKIE = "tideflow_token"
CSRF_HEADER = "x-tideflow-csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ConfigError(TideflowError):
    """The web process is misconfigured (it refuses to start)."""


class Unauthorized(TideflowError):
    """No valid token on the request."""


class Forbidden(TideflowError):
    """A cookie-authenticated change without the CSRF header."""


def check_config(settings: Settings) -> None:
    if settings.api_auth and not settings.api_tokens:
        raise ConfigError("set TIDEFLOW_API_TOKEN (or TIDEFLOW_API_AUTH=off for local use only)")


def token_ok(settings: Settings, token: str | None) -> bool:
    if not token:
        return False
    given = token.encode()
    # compare against every token, without stopping early, in constant time each
    return any([hmac.compare_digest(given, t.encode()) for t in settings.api_tokens])


def bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def authenticated(request: Request, settings: Settings) -> bool:
    """For pages: is there a valid bearer token or cookie? (No CSRF question for reads.)"""
    if not settings.api_auth:
        return True
    return token_ok(settings, bearer(request)) or token_ok(settings, request.cookies.get(COOKIE))


def require(request: Request) -> None:
    """Dependency for every protected route."""
    settings: Settings = request.app.state.settings
    if not settings.api_auth:
        return
    if token_ok(settings, bearer(request)):
        return
    if token_ok(settings, request.cookies.get(COOKIE)):
        if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
            raise Forbidden(f"a browser session must send the {CSRF_HEADER} header to change anything")
        return
    raise Unauthorized("missing or invalid token: send 'Authorization: Bearer <TIDEFLOW_API_TOKEN>'")
