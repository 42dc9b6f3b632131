"""Roles and login on the REST API and the UI's login form (in-process, PostgreSQL and SQLite): named tokens with
roles, the token's name as the history's actor, signed sessions that a token's removal revokes, rate-limited
failed sign-ins, the OpenAPI bearer scheme and the offline Swagger UI. (The browser: tests/ui/test_ui_login.py;
the ``tideflow token`` commands: tests/acceptance/test_cli_tokens.py.)"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from app.api.app import create_app
from app.api.auth import COOKIE, CSRF_HEADER, ConfigError, LoginLimiter, TooManyFailures, make_session
from app.config import load_settings
from app.db.schema import ApiToken
from app.errors import InvalidState, NotFound
from app.services.tokens import BadToken, add_token, remove_token
from tests.support.api import AUTH, HELLO, make_client, row_counts


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _add(tf: Any, name: str, role: str) -> str:
    with tf.runtime.db.transaction() as s:
        return add_token(s, name, role)


def _error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == code and body["message"] and "\n" not in body["message"], body
    return dict(body)


@pytest.fixture
def api(db_url: str) -> Iterator[Any]:
    client, tf = make_client(db_url)
    try:
        yield client, tf
    finally:
        tf.close()


def test_roles_allow_reads_run_control_and_registration_in_turn(api) -> None:
    client, tf = api
    viewer, operator, admin = (_bearer(_add(tf, n, r)) for n, r in
                               (("vera", "viewer"), ("otto", "operator"), ("ada", "admin")))
    # registering needs admin: viewer and operator get a one-line 403 and nothing is stored
    before = row_counts(tf)
    for who, role in ((viewer, "viewer"), (operator, "operator")):
        body = _error(client.post("/api/workflows", json=HELLO, headers=who), 403, "forbidden")
        assert f"has role {role}; this needs admin" in body["message"]
    assert row_counts(tf) == before
    assert client.post("/api/workflows", json=HELLO, headers=admin).status_code == 201

    # a viewer reads everything but starts nothing
    assert client.get("/api/runs", headers=viewer).status_code == 200
    assert client.get("/api/workflows/hello", headers=viewer).status_code == 200
    before = row_counts(tf)
    body = _error(client.post("/api/runs", json={"workflow": "hello"}, headers=viewer), 403, "forbidden")
    assert body["message"] == "token 'vera' has role viewer; this needs operator"
    assert row_counts(tf) == before and tf.runtime.dispatcher.executed == []

    # an operator starts, cancels and retries; a viewer cannot cancel or retry
    started = client.post("/api/runs", json={"workflow": "hello"}, headers=operator)
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]
    _error(client.post(f"/api/runs/{run_id}/cancel", headers=viewer), 403, "forbidden")
    assert client.post(f"/api/runs/{run_id}/cancel", headers=operator).json()["state"] == "cancelled"
    _error(client.post(f"/api/runs/{run_id}/retry", headers=viewer), 403, "forbidden")
    assert client.post(f"/api/runs/{run_id}/retry", headers=operator).status_code == 200
    # an admin may do everything an operator may
    assert client.post(f"/api/runs/{run_id}/cancel", headers=admin).status_code == 200
    # /metrics is a read
    assert client.get("/metrics", headers=viewer).status_code == 200


def test_a_route_without_a_declared_role_needs_operator_to_write_and_a_declared_one_wins(db_url: str) -> None:
    """The contract for new routes (app/api/auth.py): under ``BY_METHOD`` a write needs operator unless its
    decorator declares a role."""
    from fastapi import APIRouter

    from app.api import auth

    extra = APIRouter(prefix="/api", dependencies=[auth.BY_METHOD])
    extra.post("/x")(lambda: {"ok": True})
    extra.post("/y", dependencies=[auth.VIEWER])(lambda: {"ok": True})
    extra.get("/z", dependencies=[auth.ADMIN])(lambda: {"ok": True})
    client, tf = make_client(db_url)
    try:
        client.app.include_router(extra)
        viewer, operator = _bearer(_add(tf, "vera", "viewer")), _bearer(_add(tf, "otto", "operator"))
        body = _error(client.post("/api/x", headers=viewer), 403, "forbidden")
        assert body["message"].endswith("this needs operator")
        assert client.post("/api/x", headers=operator).status_code == 200
        assert client.post("/api/y", headers=viewer).status_code == 200
        assert _error(client.get("/api/z", headers=operator), 403, "forbidden")["message"].endswith("needs admin")
        assert client.get("/api/z", headers=AUTH).status_code == 200
    finally:
        tf.close()


def test_the_history_names_the_token_that_acted(api) -> None:
    client, tf = api
    client.post("/api/workflows", json=HELLO, headers=AUTH)
    otto = _bearer(_add(tf, "otto", "operator"))
    run_id = client.post("/api/runs", json={"workflow": "hello"}, headers=otto).json()["id"]
    client.post(f"/api/runs/{run_id}/cancel", headers=_bearer(_add(tf, "carla", "operator")))
    history = client.get(f"/api/runs/{run_id}/history", headers=AUTH).json()
    assert history[0]["to"] == "running" and history[0]["actor"] == "otto"
    assert history[-1]["to"] == "cancelled" and history[-1]["actor"] == "carla"
    # a TIDEFLOW_API_TOKEN entry NAME:SECRET acts as NAME
    client2, tf2 = make_client(tf.runtime.settings.database_url, api_token="deploy-bot:s3cret-one, plain-two")
    try:
        run2 = client2.post("/api/runs", json={"workflow": "hello"}, headers=_bearer("s3cret-one")).json()["id"]
        run3 = client2.post("/api/runs", json={"workflow": "hello"}, headers=_bearer("plain-two")).json()["id"]
        assert client2.get(f"/api/runs/{run2}/history", headers=_bearer("plain-two")).json()[0]["actor"] == "deploy-bot"
        assert client2.get(f"/api/runs/{run3}/history", headers=_bearer("plain-two")).json()[0]["actor"] == "env"
    finally:
        tf2.close()


def test_only_the_secrets_hash_is_stored_and_names_are_unique(api) -> None:
    _client, tf = api
    secret = _add(tf, "vera", "viewer")
    with tf.runtime.db.read() as s:
        row = s.execute(select(ApiToken.name, ApiToken.role, ApiToken.digest)).one()
    assert (row.name, row.role) == ("vera", "viewer")
    assert row.digest == hashlib.sha256(secret.encode()).hexdigest() and secret not in row.digest
    with pytest.raises(InvalidState, match="already exists"):
        _add(tf, "vera", "admin")
    with pytest.raises(BadToken, match="invalid role"):
        _add(tf, "zed", "root")
    with pytest.raises(BadToken, match="invalid token name"):
        _add(tf, "bad name", "viewer")
    with tf.runtime.db.transaction() as s, pytest.raises(NotFound, match="no token named 'nobody'"):
        remove_token(s, "nobody")
    with tf.runtime.db.read() as s:
        assert [t.name for t in s.execute(select(ApiToken)).scalars()] == ["vera"]


def test_the_session_cookie_is_signed_and_removing_the_token_ends_it(api) -> None:
    client, tf = api
    secret = _add(tf, "otto", "operator")
    resp = client.post("/login", data={"token": secret, "next": "/"}, follow_redirects=False)
    assert resp.status_code == 303
    session = client.cookies[COOKIE]
    assert secret not in session and "otto" not in session
    assert "httponly" in resp.headers["set-cookie"].lower()
    # the session reads, and changes with the CSRF header; as its token's role and name
    assert client.get("/api/runs").status_code == 200
    assert client.get("/", follow_redirects=False).status_code == 200
    client.post("/api/workflows", json=HELLO, headers=AUTH)
    started = client.post("/api/runs", json={"workflow": "hello"}, headers={CSRF_HEADER: "1"})
    assert started.status_code == 201, started.text
    history = client.get(f"/api/runs/{started.json()['id']}/history").json()
    assert history[0]["actor"] == "otto"

    # a forged or altered cookie is no session
    payload, _, sig = session.partition(".")
    for forged in (f"{payload}.{sig[:-2]}xx", f"{payload[:-2]}AA.{sig}", "garbage", ""):
        client.cookies.clear()
        client.cookies.set(COOKIE, forged)
        _error(client.get("/api/runs"), 401, "unauthorized")
    # one signed with another key neither
    other = load_settings(api_token="another-deployment")
    client.cookies.clear()
    client.cookies.set(COOKIE, make_session(other, hashlib.sha256(secret.encode()).hexdigest()))
    _error(client.get("/api/runs"), 401, "unauthorized")
    # an expired one neither
    client.cookies.clear()
    client.cookies.set(COOKIE, make_session(tf.runtime.settings, hashlib.sha256(secret.encode()).hexdigest(),
                                            now=0))
    _error(client.get("/api/runs"), 401, "unauthorized")

    # removing the token ends the session at once: the API says so, the pages send to the login form
    client.cookies.clear()
    client.cookies.set(COOKIE, session)
    assert client.get("/api/runs").status_code == 200
    with tf.runtime.db.transaction() as s:
        remove_token(s, "otto")
    body = _error(client.get("/api/runs"), 401, "unauthorized")
    assert "sign in again" in body["message"]
    page = client.get("/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    _error(client.get("/api/runs", headers=_bearer(secret)), 401, "unauthorized")


def test_failed_sign_ins_are_rate_limited_per_address(db_url: str) -> None:
    client, tf = make_client(db_url, login_max_failures=3, login_window_seconds=600)
    try:
        secret = _add(tf, "vera", "viewer")
        for _ in range(2):
            assert client.post("/login", data={"token": "guess"}).status_code == 401
        _error(client.get("/api/runs", headers=_bearer("guess")), 401, "unauthorized")
        # the limit is reached: this address's secrets are not even checked, the right one neither
        resp = client.post("/login", data={"token": secret}, follow_redirects=False)
        assert resp.status_code == 429 and "Too many failed sign-ins" in resp.text
        assert COOKIE not in client.cookies
        assert 1 <= int(resp.headers["retry-after"]) <= 600
        body = _error(client.get("/api/runs", headers=_bearer(secret)), 429, "too_many_requests")
        assert "too many failed sign-ins from testclient" in body["message"]
        assert int(client.get("/api/runs", headers=_bearer(secret)).headers["retry-after"]) <= 600
        # requests without a secret are no guesses, and the public routes stay open
        _error(client.get("/api/runs"), 401, "unauthorized")
        assert client.get("/api/health").status_code == 200
    finally:
        tf.close()


def test_the_limiter_forgets_failures_after_its_window() -> None:
    now = [1000.0]
    lim = LoginLimiter(max_failures=2, window=60, clock=lambda: now[0])
    lim.failed("10.0.0.1")
    now[0] += 30
    lim.failed("10.0.0.1")
    with pytest.raises(TooManyFailures) as exc:
        lim.check("10.0.0.1")
    assert exc.value.retry_after == 30
    lim.check("10.0.0.2")  # another address is not affected
    now[0] += 30.5  # the first failure has left the window
    lim.check("10.0.0.1")
    lim.failed("10.0.0.1")
    with pytest.raises(TooManyFailures):
        lim.check("10.0.0.1")


def test_openapi_declares_the_bearer_scheme_on_protected_routes(api) -> None:
    client, _tf = api
    doc = client.get("/api/openapi.json").json()  # public, as the docs page
    schemes = doc["components"]["securitySchemes"]
    assert list(schemes.values()) == [{"type": "http", "scheme": "bearer",
                                       "description": schemes[next(iter(schemes))]["description"]}]
    name = next(iter(schemes))
    for path, op in (("/api/runs", "get"), ("/api/runs", "post"), ("/api/workflows", "post"),
                     ("/api/runs/{run_id}/cancel", "post")):
        assert doc["paths"][path][op]["security"] == [{name: []}], (path, op)
        assert "403" in doc["paths"][path][op]["responses"]
    assert "security" not in doc["paths"]["/api/health"]["get"]


def test_swagger_ui_is_served_from_the_package_not_a_cdn(api) -> None:
    client, _tf = api
    page = client.get("/api/docs")  # public
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page.text)
    urls += re.findall(r"""url:\s*["']([^"']+)["']""", page.text)
    assert len(urls) >= 4, urls  # the script, the stylesheet, the icon and the document
    assert not re.search(r"https?://|//cdn|jsdelivr|unpkg", page.text), "the docs page loads something from afar"
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        resp = client.get(url)
        assert resp.status_code == 200 and len(resp.content) > 100, url
    assert "/api/openapi.json" in urls
    assert "swagger-ui" in client.get("/static/swagger/swagger-ui-bundle.js").text[:5000].lower()


def test_web_starts_with_a_secret_key_and_only_named_tokens(db_url: str) -> None:
    with pytest.raises(ConfigError, match="TIDEFLOW_SECRET_KEY"):
        create_app(load_settings(database_url=db_url, api_token=None))
    client, tf = make_client(db_url, api_token=None, secret_key="k" * 32)
    try:
        secret = _add(tf, "ada", "admin")
        assert client.post("/api/workflows", json=HELLO, headers=_bearer(secret)).status_code == 201
        _error(client.get("/api/runs", headers=_bearer("t0ken-for-tests")), 401, "unauthorized")
        assert client.post("/login", data={"token": secret}, follow_redirects=False).status_code == 303
        assert client.get("/api/runs").status_code == 200
    finally:
        tf.close()
