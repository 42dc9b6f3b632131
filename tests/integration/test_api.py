"""The REST API on PostgreSQL and SQLite: status codes, JSON errors, auth, paging, and that a rejected
request stores nothing. (Fuzzing: test_api_fuzz.py; real workers behind the API: tests/acceptance.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.api.app import create_app
from app.api.auth import COOKIE, CSRF_HEADER, ConfigError
from app.config import load_settings
from tests.support.api import AUTH, HELLO, TOKEN, make_client, row_counts


@pytest.fixture
def api(db_url: str) -> Iterator:
    client, tf = make_client(db_url)
    try:
        yield client, tf
    finally:
        tf.close()


def _error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["error"] == code and body["message"], body
    return body


def test_workflow_and_run_lifecycle(api) -> None:
    client, tf = api
    created = client.post("/api/workflows", json=HELLO, headers=AUTH)
    assert created.status_code == 201 and created.json() == {"name": "hello", "version": 1, "created": True}
    again = client.post("/api/workflows", json=HELLO, headers=AUTH)
    assert again.status_code == 200 and again.json()["created"] is False
    changed = client.post("/api/workflows", json={**HELLO, "description": "v2"}, headers=AUTH)
    assert changed.status_code == 201 and changed.json()["version"] == 2
    assert client.get("/api/workflows/hello", headers=AUTH).json()["versions"] == [1, 2]
    assert client.get("/api/workflows/hello?version=1", headers=AUTH).json()["version"] == 1
    # the stored workflows (the list also shows code workflows this process registered, e.g. by another test)
    listed = client.get("/api/workflows", headers=AUTH).json()
    assert [w["name"] for w in listed if w["version"] is not None] == ["hello"]

    run = client.post("/api/runs", json={"workflow": "hello", "params": {"who": "you"}, "priority": 8,
                                         "version": 1}, headers=AUTH)
    assert run.status_code == 201, run.text
    body = run.json()
    assert body["state"] == "running" and body["priority"] == 8 and body["params"] == {"who": "you"}
    assert body["workflow_version"] == 1
    tasks = {t["name"]: t for t in body["tasks"]}
    assert tasks["a"]["state"] == "submitted" and tasks["b"]["depends_on"] == ["a"]
    assert (tasks["a"]["layer"], tasks["b"]["layer"]) == (0, 1)
    assert [m.task_run_id for m in tf.runtime.dispatcher.executed] == [tasks["a"]["id"]]

    history = client.get(f"/api/runs/{body['id']}/history", headers=AUTH).json()
    assert [(e["task"], e["from"], e["to"]) for e in history] == [
        (None, None, "running"), ("a", "pending", "submitted")]
    assert history[0]["actor"] == "env"  # the name of a TIDEFLOW_API_TOKEN entry without one
    logs = client.get(f"/api/tasks/{tasks['a']['id']}/logs", headers=AUTH).json()
    assert logs["name"] == "a" and logs["attempts"] == []

    _error(client.post(f"/api/runs/{body['id']}/retry", headers=AUTH), 409, "conflict")
    cancelled = client.post(f"/api/runs/{body['id']}/cancel", headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    _error(client.post(f"/api/runs/{body['id']}/cancel", headers=AUTH), 409, "conflict")
    retried = client.post(f"/api/runs/{body['id']}/retry", headers=AUTH)
    assert retried.status_code == 200 and retried.json() == {"id": body["id"], "state": "running", "reset": 2}


def test_list_runs_filters_and_pages(api) -> None:
    client, _tf = api
    client.post("/api/workflows", json=HELLO, headers=AUTH)
    client.post("/api/workflows", json={**HELLO, "name": "other"}, headers=AUTH)
    ids = [client.post("/api/runs", json={"workflow": w}, headers=AUTH).json()["id"]
           for w in ("hello", "other", "hello", "hello", "other")]
    client.post(f"/api/runs/{ids[0]}/cancel", headers=AUTH)

    page = client.get("/api/runs?workflow=hello&limit=2", headers=AUTH).json()
    assert [r["id"] for r in page["items"]] == [ids[3], ids[2]] and page["next_before"] == ids[2]
    rest = client.get(f"/api/runs?workflow=hello&limit=2&before={page['next_before']}", headers=AUTH).json()
    assert [r["id"] for r in rest["items"]] == [ids[0]] and rest["next_before"] is None
    cancelled = client.get("/api/runs?state=cancelled", headers=AUTH).json()["items"]
    assert [r["id"] for r in cancelled] == [ids[0]]
    _error(client.get("/api/runs?state=bogus", headers=AUTH), 422, "invalid_request")
    _error(client.get("/api/runs?limit=0", headers=AUTH), 422, "invalid_request")


@pytest.mark.parametrize("method,path,body,status,code", [
    ("post", "/api/workflows", {"name": "x", "tasks": [{"name": "a", "type": "shell", "command": "true",
                                                        "depends_on": ["a"]}]}, 422, "invalid_definition"),
    ("post", "/api/workflows", {"name": "x", "tasks": []}, 422, "invalid_request"),
    ("post", "/api/workflows", {"name": "x", "tasks": [{"name": "s", "type": "subworkflow", "workflow": "nope"}]},
     422, "invalid_definition"),
    ("post", "/api/workflows", "not an object", 422, "invalid_request"),
    ("post", "/api/runs", {"workflow": "nope"}, 404, "not_found"),
    ("post", "/api/runs", {"workflow": "hello", "params": {"undeclared": 1}}, 422, "invalid_definition"),
    ("post", "/api/runs", {"workflow": "hello", "priority": 10}, 422, "invalid_request"),
    ("post", "/api/runs", {"workflow": "hello", "surprise": True}, 422, "invalid_request"),
    ("post", "/api/runs", {"workflow": "hello", "version": 9}, 404, "not_found"),
    ("post", "/api/runs", {"workflow": "bad\x00name"}, 422, "invalid_request"),
    ("get", "/api/runs/999", None, 404, "not_found"),
    ("get", f"/api/runs/{2**63}", None, 422, "invalid_request"),
    ("get", "/api/runs/abc", None, 422, "invalid_request"),
    ("post", "/api/runs/999/cancel", None, 404, "not_found"),
    ("post", "/api/runs/999/retry", None, 404, "not_found"),
    ("get", "/api/tasks/999/logs", None, 404, "not_found"),
    ("get", "/api/workflows/nope", None, 404, "not_found"),
    ("get", "/api/nothing-here", None, 404, "not_found"),
    ("delete", "/api/runs/1", None, 405, "method_not_allowed"),
])
def test_rejected_requests_are_json_and_store_nothing(api, method, path, body, status, code) -> None:
    client, tf = api
    client.post("/api/workflows", json=HELLO, headers=AUTH)
    before = row_counts(tf)
    sent = tf.runtime.dispatcher.executed[:]
    _error(client.request(method, path, json=body, headers=AUTH), status, code)
    assert row_counts(tf) == before
    assert tf.runtime.dispatcher.executed == sent


def test_malformed_json_body(api) -> None:
    client, tf = api
    before = row_counts(tf)
    resp = client.post("/api/workflows", content=b"{nope", headers={**AUTH, "content-type": "application/json"})
    _error(resp, 422, "invalid_request")
    assert row_counts(tf) == before


def test_authentication(api) -> None:
    client, tf = api
    assert client.get("/api/health").status_code == 200  # health needs no token (load balancers)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": "Bearer"}):
        body = _error(client.get("/api/runs", headers=headers), 401, "unauthorized")
        assert "TIDEFLOW_API_TOKEN" in body["message"]
    assert client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).headers["www-authenticate"] == "Bearer"
    before = row_counts(tf)
    _error(client.post("/api/workflows", json=HELLO), 401, "unauthorized")
    assert row_counts(tf) == before
    assert client.get("/api/runs", headers=AUTH).status_code == 200

    # a browser session (cookie) reads freely, but changes need the CSRF header a cross-site form cannot send
    client.cookies.set(COOKIE, TOKEN)  # the token itself is not a session
    _error(client.get("/api/runs"), 401, "unauthorized")
    client.cookies.clear()
    assert client.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303
    assert client.cookies[COOKIE] != TOKEN
    assert client.get("/api/runs").status_code == 200
    _error(client.post("/api/workflows", json=HELLO), 403, "forbidden")
    assert row_counts(tf) == before
    assert client.post("/api/workflows", json=HELLO, headers={CSRF_HEADER: "1"}).status_code == 201
    client.cookies.clear()


def test_token_rotation_and_auth_off(db_url: str) -> None:
    client, tf = make_client(db_url, api_token="old-one, new-one")
    try:
        for token in ("old-one", "new-one"):
            assert client.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/api/runs", headers={"Authorization": "Bearer old-one, new-one"}).status_code == 401
    finally:
        tf.close()
    client, tf = make_client(db_url, api_token=None, api_auth="off")
    try:
        assert client.get("/api/runs").status_code == 200
    finally:
        tf.close()


def test_refuses_to_start_without_a_token() -> None:
    with pytest.raises(ConfigError, match="TIDEFLOW_API_TOKEN"):
        create_app(load_settings(api_token=None))
    with pytest.raises(ConfigError):
        create_app(load_settings(api_token=" , "))


def test_openapi_document(api) -> None:
    client, _tf = api
    doc = client.get("/api/openapi.json").json()
    paths = set(doc["paths"])
    assert {"/api/workflows", "/api/workflows/{name}", "/api/runs", "/api/runs/{run_id}",
            "/api/runs/{run_id}/history", "/api/runs/{run_id}/cancel", "/api/runs/{run_id}/retry",
            "/api/tasks/{task_run_id}/logs", "/api/health"} <= paths
    assert doc["paths"]["/api/runs"]["post"]["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}
    assert client.get("/api/docs").status_code == 200


def test_database_outage_is_503_and_retryable(tmp_path) -> None:
    client, tf = make_client("postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=2")
    try:
        body = _error(client.get("/api/runs", headers=AUTH), 503, "unavailable")
        assert "nothing was changed" in body["message"]
        assert client.get("/api/runs", headers=AUTH).headers["retry-after"] == "5"
        health = client.get("/api/health")
        assert health.status_code == 503 and health.json()["database"] is False
    finally:
        tf.close()


def test_start_with_a_key_is_idempotent(api) -> None:
    """POST /api/runs with a key: 201 and a new run the first time, 200 and the same run after (DAG runs too)."""
    client, tf = api
    assert client.post("/api/workflows", json=HELLO, headers=AUTH).status_code == 201
    first = client.post("/api/runs", json={"workflow": "hello", "key": "invoice-7"}, headers=AUTH)
    assert first.status_code == 201, first.text
    again = client.post("/api/runs", json={"workflow": "hello", "key": "invoice-7", "params": {"who": "x"}},
                        headers=AUTH)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.json()["key"] == "invoice-7"
    other = client.post("/api/runs", json={"workflow": "hello", "key": "invoice-8"}, headers=AUTH)
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert len(client.get("/api/runs", headers=AUTH).json()["items"]) == 2
