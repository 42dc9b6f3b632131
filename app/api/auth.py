"""Authentication and roles for the API, the UI and /metrics.

Who: a client sends ``Authorization: Bearer <secret>`` of a named token (``tideflow token add NAME --role R``,
stored hashed) or of ``TIDEFLOW_API_TOKEN`` (admin; ``SECRET`` is named ``env``, ``NAME:SECRET`` is named NAME).
The browser signs in on ``POST /login`` and gets a *signed session* cookie (HttpOnly, SameSite=Strict) that
carries the token's digest, not its secret; every request re-checks that the token still exists, so
``tideflow token remove`` ends its sessions at once. A cookie-authenticated request that changes something
must also carry the ``X-Tideflow-CSRF`` header (a cross-site form cannot set it). ``TIDEFLOW_API_AUTH=off``
turns checking off, for local use only. Failed sign-ins (the login form, or a wrong bearer secret) are limited
per client address, in each web process's memory (:class:`LoginLimiter`).

What each kind of route needs (the run history's actor is the token's name):

============================================================  ============
reads: every ``GET`` (runs, workflows, logs, grid, /metrics)  ``viewer``
run control: start, cancel, retry, signal, resume             ``operator``
administration: register workflows, schedules, pools          ``admin``
============================================================  ============

The ``/api`` router declares :data:`BY_METHOD` once: a ``GET``/``HEAD`` needs ``viewer``, any other method
``operator``. A route that needs another role declares it in its decorator, ``dependencies=[auth.ADMIN]`` (or
:data:`OPERATOR`, or :data:`VIEWER` for a ``POST`` that only reads); the declared role then replaces the
default. ``GET /api/health``, ``/api/docs`` and ``/api/openapi.json`` are public (they describe the API and hold
no data).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.config import Settings
from app.errors import TideflowError
from app.services.tokens import Identity, Reader, Role, identify, identify_digest

COOKIE = "tideflow_session"
CSRF_HEADER = "x-tideflow-csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ConfigError(TideflowError):
    """The web process is misconfigured (it refuses to start)."""


class Unauthorized(TideflowError):
    """No valid token on the request."""


class Forbidden(TideflowError):
    """The token's role does not allow this, or a cookie-authenticated change without the CSRF header."""


class TooManyFailures(TideflowError):
    """This client address failed to sign in too often; ``retry_after`` seconds to wait."""

    def __init__(self, message: str, retry_after: int):
        self.retry_after = retry_after
        super().__init__(message)


def check_config(settings: Settings) -> None:
    if settings.api_auth and not settings.api_tokens and settings.secret_key is None:
        raise ConfigError("set TIDEFLOW_API_TOKEN (an admin token), or TIDEFLOW_SECRET_KEY to use only named "
                          "tokens (tideflow token add), or TIDEFLOW_API_AUTH=off for local use only")


# -- the session cookie -----------------------------------------------------------------------------


def signing_key(settings: Settings) -> bytes:
    """``TIDEFLOW_SECRET_KEY``, else a key derived from the ``TIDEFLOW_API_TOKEN`` secrets (the same in every web
    process of a deployment; rotating those tokens ends the sessions)."""
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return settings.secret_key.get_secret_value().encode()
    material = "\n".join(sorted(settings.api_tokens)).encode()
    return hmac.new(b"tideflow-session-key-v1", material, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_session(settings: Settings, token_digest: str, now: float | None = None) -> str:
    """``payload.signature``: the token's digest and an expiry, signed with HMAC-SHA256."""
    exp = int((now if now is not None else time.time()) + settings.session_max_age_seconds)
    payload = _b64(json.dumps({"d": token_digest, "exp": exp}, separators=(",", ":")).encode())
    sig = _b64(hmac.new(signing_key(settings), payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{sig}"


def session_digest(settings: Settings, cookie: str | None) -> str | None:
    """The token digest a valid, unexpired session cookie carries (None for anything else)."""
    if not cookie or len(cookie) > 1000 or "." not in cookie:
        return None
    payload, _, sig = cookie.partition(".")
    good = _b64(hmac.new(signing_key(settings), payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(sig, good):
        return None
    try:
        data = json.loads(_unb64(payload))
        token_digest, exp = str(data["d"]), float(data["exp"])
    except (ValueError, KeyError, TypeError):
        return None
    return token_digest if exp > time.time() else None


# -- failed sign-ins --------------------------------------------------------------------------------


class LoginLimiter:
    """At most ``max_failures`` failed sign-ins per client address in a sliding ``window`` (seconds); past that,
    that address's secrets are not even checked until its oldest failure leaves the window. In this process's
    memory: each web process counts its own (behind a load balancer, the limit is per process)."""

    MAX_ADDRESSES = 10_000

    def __init__(self, max_failures: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def check(self, address: str) -> None:
        """Raise :class:`TooManyFailures` while ``address`` is locked out."""
        with self._lock:
            now = self.clock()
            times = self._recent(address, now)
            if len(times) >= self.max_failures:
                wait = max(1, int(times[0] + self.window - now + 0.999))
                raise TooManyFailures(f"too many failed sign-ins from {address}; try again in {wait} s", wait)

    def failed(self, address: str) -> None:
        with self._lock:
            now = self.clock()
            if len(self._failures) >= self.MAX_ADDRESSES:  # forget addresses whose failures all expired
                for key in [k for k, v in self._failures.items() if not v or v[-1] <= now - self.window]:
                    del self._failures[key]
            times = self._recent(address, now)
            times.append(now)
            self._failures[address] = times


def install(app: Any, settings: Settings) -> None:
    """Give the app its failed-sign-in counter (``create_app`` calls :func:`check_config` first)."""
    app.state.login_limiter = LoginLimiter(settings.login_max_failures, settings.login_window_seconds)


def limiter(request: Request) -> LoginLimiter:
    lim: LoginLimiter = request.app.state.login_limiter
    return lim


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"


# -- who is asking ----------------------------------------------------------------------------------


def bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _reader(request: Request) -> Reader:
    reader: Reader = request.app.state.tideflow.runtime.db.read
    return reader


def sign_in(request: Request, secret: str | None) -> Identity:
    """The identity of a secret presented by this client (login form or bearer header); failures count
    against the client's address (:class:`LoginLimiter`)."""
    lim, address = limiter(request), client_address(request)
    lim.check(address)
    ident = identify(request.app.state.settings, _reader(request), secret)
    if ident is None:
        lim.failed(address)
        raise Unauthorized("missing or invalid token: send 'Authorization: Bearer <token>' (a named token from "
                           "`tideflow token add`, or TIDEFLOW_API_TOKEN)")
    return ident


def authenticate(request: Request) -> Identity:
    """Who the request is (raises :class:`Unauthorized` or :class:`Forbidden`); remembered on ``request.state``."""
    cached: Identity | None = getattr(request.state, "identity", None)
    if cached is not None:
        return cached
    settings: Settings = request.app.state.settings
    if not settings.api_auth:
        via = "ui" if request.headers.get(CSRF_HEADER) else "api"
        ident = Identity(f"{via}@{client_address(request)}", Role.ADMIN, "")
    elif (secret := bearer(request)) is not None:
        ident = sign_in(request, secret)
    elif (cookie := request.cookies.get(COOKIE)) is not None:
        token_digest = session_digest(settings, cookie)
        found = identify_digest(settings, _reader(request), token_digest) if token_digest else None
        if found is None:
            raise Unauthorized("the session has ended (signed out, expired, or its token was removed): sign in again")
        if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
            raise Forbidden(f"a browser session must send the {CSRF_HEADER} header to change anything")
        ident = found
    else:
        raise Unauthorized("missing or invalid token: send 'Authorization: Bearer <token>' (a named token from "
                           "`tideflow token add`, or TIDEFLOW_API_TOKEN)")
    request.state.identity = ident
    return ident


def authenticated(request: Request, _settings: Settings | None = None) -> bool:
    """For pages: is there a valid bearer token or session? (No CSRF question for reads.) The settings are the
    request's app's; the second argument is accepted for older callers."""
    try:
        authenticate(request)
    except (Unauthorized, Forbidden, TooManyFailures):
        return False
    return True


def actor(request: Request) -> str:
    """Who did it, for the run history: the token's name (``via@address`` with authentication off)."""
    return authenticate(request).name


#: declares the bearer scheme in the OpenAPI document (Swagger UI's "Authorize"); the header is read above
_scheme = HTTPBearer(auto_error=False, description="a named token (`tideflow token add`) or TIDEFLOW_API_TOKEN")


def identity(request: Request,
             _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_scheme)]) -> Identity:
    return authenticate(request)


def _check(ident: Identity, needed: Role) -> Identity:
    if not ident.role.allows(needed):
        raise Forbidden(f"token '{ident.name}' has role {ident.role}; this needs {needed}")
    return ident


def needs(role: Role) -> Callable[..., Identity]:
    """A dependency: the request's identity, which must have ``role`` or a higher one (403 otherwise)."""

    def dependency(ident: Annotated[Identity, Depends(identity)]) -> Identity:
        return _check(ident, role)

    dependency.__name__ = f"needs_{role}"
    dependency.role = role  # type: ignore[attr-defined]  # read by by_method
    return dependency


def _declared(request: Request) -> Role | None:
    """The role the matched route declares with ``dependencies=[auth.ADMIN]`` (etc.), if any."""
    roles = [getattr(dep.dependency, "role", None) for dep in getattr(request.scope.get("route"), "dependencies", ())]
    found = [r for r in roles if isinstance(r, Role)]
    return max(found, key=lambda r: r.rank) if found else None


def by_method(request: Request, ident: Annotated[Identity, Depends(identity)]) -> Identity:
    """The route's declared role if it has one (so a 403 names what it really needs), else: reads (``GET``,
    ``HEAD``) need ``viewer``, anything else ``operator``."""
    declared = _declared(request)
    if declared is not None:
        return _check(ident, declared)
    return _check(ident, Role.VIEWER if request.method in SAFE_METHODS else Role.OPERATOR)


require = needs(Role.VIEWER)  # /metrics
VIEWER = Depends(needs(Role.VIEWER))
OPERATOR = Depends(needs(Role.OPERATOR))
ADMIN = Depends(needs(Role.ADMIN))
BY_METHOD = Depends(by_method)
