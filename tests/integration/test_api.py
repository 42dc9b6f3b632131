"""The REST API on PostgreSQL and SQLite: status codes, JSON errors, auth, paging, and that a rejected
request stores nothing. (Fuzzing: test_api_fuzz.py; real workers behind the API: tests/acceptance.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app.api.app import create_app
from app.api.auth import COOKIE, CSRF_HEADER, ConfigError
from app.config import load_settings
from app.services.worker import execute
from tests.support import codeflows
from tests.support.api import AUTH, HELLO, TOKEN, make_client, row_counts
from tests.support.inprocess import StubProcess, reset_codeflows


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
    assert created.status_code == 201
    assert created.json() == {"name": "hello", "version": 1, "created": True, "warnings": []}
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
    ("post", "/api/workflows", {"name": "x", "tasks": [{"name": "a", "type": "shell", "command": "true",
                                                        "when": "params.region == 'eu'"}]}, 422, "invalid_definition"),
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
            "/api/tasks/{task_run_id}/logs", "/api/health", "/api/runs/{run_id}/signals/{name}",
            "/api/runs/{run_id}/resume", "/api/workflows/{name}/grid"} <= paths
    schemas = doc["components"]["schemas"]
    assert {"steps", "waiting", "blocked", "children", "parent_run_id"} <= set(schemas["RunDetail"]["properties"])
    assert {"parent_run_id"} <= set(schemas["RunSummary"]["properties"])
    assert [p["name"] for p in doc["paths"]["/api/runs"]["get"]["parameters"]][:2] == ["state", "kind"]
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


@pytest.fixture
def code_api(db_url: str) -> Iterator:
    """The API of a process that imports the code workflows (TIDEFLOW_WORKFLOW_MODULES), as ``tideflow web``."""
    client, tf = make_client(db_url, workflow_modules="tests.support.codeflows")
    try:
        yield client, tf
    finally:
        tf.close()


def test_parent_and_children_on_run_views_and_kind_filter(code_api) -> None:
    """Every run view names its parent run; a run's view lists the runs its tasks started; ?kind= filters."""
    client, _tf = code_api
    parent_dag = {"name": "outer", "tasks": [{"name": "inner", "type": "subworkflow", "workflow": "hello"}]}
    assert client.post("/api/workflows", json=HELLO, headers=AUTH).status_code == 201
    assert client.post("/api/workflows", json=parent_dag, headers=AUTH).status_code == 201
    dag = client.post("/api/runs", json={"workflow": "outer"}, headers=AUTH).json()
    code = client.post("/api/runs", json={"workflow": "code_parent", "params": {"x": 1}}, headers=AUTH)
    assert code.status_code == 201, code.text
    code_id = code.json()["id"]

    dag_children = client.get(f"/api/runs/{dag['id']}", headers=AUTH).json()["children"]
    assert [(c["workflow"], c["kind"], c["state"]) for c in dag_children] == [("hello", "dag", "running")]
    assert dag["parent_run_id"] is None
    code_children = client.get(f"/api/runs/{code_id}", headers=AUTH).json()["children"]
    assert [(c["workflow"], c["kind"]) for c in code_children] == [("adder", "code")]
    child = client.get(f"/api/runs/{dag_children[0]['id']}", headers=AUTH).json()
    assert child["parent_run_id"] == dag["id"] and child["children"] == []

    listed = {r["id"]: r for r in client.get("/api/runs", headers=AUTH).json()["items"]}
    assert listed[dag_children[0]["id"]]["parent_run_id"] == dag["id"]
    assert listed[code_children[0]["id"]]["parent_run_id"] == code_id
    assert listed[dag["id"]]["parent_run_id"] is None and listed[code_id]["parent_run_id"] is None

    codes = client.get("/api/runs?kind=code", headers=AUTH).json()["items"]
    assert sorted(r["id"] for r in codes) == sorted([code_id, code_children[0]["id"]])
    assert {r["kind"] for r in client.get("/api/runs?kind=dag", headers=AUTH).json()["items"]} == {"dag"}
    assert client.get("/api/runs?state=blocked", headers=AUTH).json()["items"] == []
    _error(client.get("/api/runs?kind=bogus", headers=AUTH), 422, "invalid_request")


class CodeApi(StubProcess):
    """The API of a process with the code workflows, whose broker is the in-process stub: ``drain`` delivers what
    a request published (advances, activities), as workers would."""

    def __init__(self, db_url: str):
        from tests.support.api import TestClient

        super().__init__(db_url, api_token=TOKEN)
        self.client = TestClient(create_app(self.rt.settings, self.tf), raise_server_exceptions=False)

    def post(self, path: str, body: Any = None, *, drain: bool = True) -> Any:
        resp = self.client.post(path, json=body, headers=AUTH)
        if drain:
            self.stub.drain(self.tf.runtime)
        return resp

    def run(self, run_id: int) -> dict[str, Any]:
        resp = self.client.get(f"/api/runs/{run_id}", headers=AUTH)
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture
def code_stub(db_url: str) -> Iterator[CodeApi]:
    reset_codeflows()
    h = CodeApi(db_url)
    yield h
    h.tf.close()


def test_code_run_start_signal_and_its_waits(code_stub: CodeApi) -> None:
    """POST /api/runs starts a code run (idempotent key), its view says what it waits for, POST .../signals/NAME
    delivers (a key twice is one signal) and the run finishes with its result; bad signals are refused."""
    h = code_stub
    first = h.post("/api/runs", {"workflow": "approval", "key": "order-9"})
    assert first.status_code == 201, first.text
    run_id = first.json()["id"]
    again = h.post("/api/runs", {"workflow": "approval", "key": "order-9"})
    assert again.status_code == 200 and again.json()["id"] == run_id
    run = h.run(run_id)
    assert run["kind"] == "code" and run["state"] == "running" and run["state_values"] == {"stage": "waiting"}
    assert run["waiting"] == {"kind": "signal", "text": "waiting for signal approve, no timeout", "seq": 0,
                              "name": "approve", "task_run_id": run["steps"][0]["task_run_id"], "more": 0,
                              "until": None, "signal": "approve", "timeout_at": None, "child_run_id": None,
                              "attempt": None}
    assert [(st["seq"], st["kind"], st["name"], st["state"]) for st in run["steps"]] == [
        (0, "signal", "approve", "running")]

    sent = h.post(f"/api/runs/{run_id}/signals/approve", {"data": {"ok": 1}, "key": "s-1"})
    assert sent.status_code == 201 and sent.json() == {"id": sent.json()["id"], "run_id": run_id,
                                                       "name": "approve", "created": True}
    dup = h.post(f"/api/runs/{run_id}/signals/approve", {"data": {"ok": 2}, "key": "s-1"})
    assert dup.status_code == 200 and dup.json()["created"] is False and dup.json()["id"] == sent.json()["id"]
    run = h.run(run_id)
    assert [(st["seq"], st["state"], st["result"]) for st in run["steps"]] == [
        (0, "succeeded", {"ok": 1}), (1, "running", None)]
    assert run["waiting"]["seq"] == 1 and run["state"] == "running"  # the duplicate was not delivered

    assert h.post(f"/api/runs/{run_id}/signals/approve").status_code == 201  # no body: data null
    run = h.run(run_id)
    assert run["state"] == "succeeded" and run["result"] == {"approved": [{"ok": 1}, None]}
    assert run["waiting"] is None and run["blocked"] is None
    history = h.client.get(f"/api/runs/{run_id}/history", headers=AUTH).json()
    assert any("signal 'approve'" in e["reason"] and e["actor"] == "env" for e in history)

    before = row_counts(h.tf)
    _error(h.post(f"/api/runs/{run_id}/signals/approve", {"data": 1}), 409, "conflict")
    _error(h.post("/api/runs/999999/signals/approve", {"data": 1}), 404, "not_found")
    _error(h.post(f"/api/runs/{run_id}/signals/bad%20name", {"data": 1}), 422, "invalid_request")
    _error(h.post(f"/api/runs/{run_id}/signals/approve", {"data": 1, "extra": 2}), 422, "invalid_request")
    _error(h.post(f"/api/runs/{run_id}/signals/approve", {"key": ""}), 422, "invalid_request")
    _error(h.post(f"/api/runs/{run_id}/signals/approve", {"key": "k\x00"}), 422, "invalid_request")  # not 500
    _error(h.post("/api/runs", {"workflow": "approval", "key": "k\x00"}), 422, "invalid_request")
    nan = h.client.post(f"/api/runs/{run_id}/signals/approve", content=b'{"data": NaN}',
                        headers={**AUTH, "content-type": "application/json"})
    assert "must be JSON" in _error(nan, 422, "invalid_request")["message"]
    assert row_counts(h.tf) == before
    h.client.post("/api/workflows", json=HELLO, headers=AUTH)
    dag = h.post("/api/runs", {"workflow": "hello"}, drain=False).json()
    _error(h.post(f"/api/runs/{dag['id']}/signals/approve"), 409, "conflict")
    assert dag["steps"] == [] and dag["waiting"] is None and dag["blocked"] is None


def test_code_run_waits_in_words(code_stub: CodeApi) -> None:
    """The current wait of a code run, in words and fields: a timer, a signal with a timeout, an activity's
    retry, a child run."""
    h = code_stub
    sleeper = h.run(h.post("/api/runs", {"workflow": "sleeper", "params": {"seconds": 3600}}).json()["id"])
    due = sleeper["steps"][0]["due_at"]
    assert due and sleeper["waiting"]["kind"] == "timer" and sleeper["waiting"]["until"] == due
    assert sleeper["waiting"]["text"] == f"sleeping until {due}"

    timed = h.run(h.post("/api/runs", {"workflow": "approval", "params": {"timeout": 60}}).json()["id"])
    timeout_at = timed["waiting"]["timeout_at"]
    assert timeout_at == timed["steps"][0]["due_at"]
    assert timed["waiting"]["text"] == f"waiting for signal approve, timeout at {timeout_at}"

    @codeflows.tideflow.workflow(name="flaky_api")
    def flaky_api(ctx: Any) -> str:
        return str(ctx.activity(codeflows.flaky, "api"))

    codeflows.FAIL["api"] = 1
    flaky_id = h.post("/api/runs", {"workflow": "flaky_api"}, drain=False).json()["id"]
    assert h.run(flaky_id)["waiting"]["text"] == "waiting for activity flaky, attempt 1"
    kind, body = h.stub.queue.popleft()  # attempt 1 runs and fails; attempt 2 is submitted (its message queued)
    assert (kind, body["attempt"]) == ("execute", 1)
    execute(h.tf.runtime, int(body["task_run_id"]), 1)
    run = h.run(flaky_id)
    assert run["waiting"]["text"] == "waiting for activity flaky, attempt 2" and run["waiting"]["attempt"] == 2
    assert [a["outcome"] for a in run["steps"][0]["attempts"]] == ["failed"]
    h.stub.drain(h.tf.runtime)
    run = h.run(flaky_id)
    assert run["state"] == "succeeded" and run["result"] == "ok api"
    assert [a["outcome"] for a in run["steps"][0]["attempts"]] == ["failed", "succeeded"]

    parent = h.run(h.post("/api/runs", {"workflow": "sleepy_parent"}).json()["id"])
    child_id = parent["children"][0]["id"]
    assert parent["steps"][0]["child_run_id"] == child_id and parent["waiting"]["child_run_id"] == child_id
    assert parent["waiting"]["text"] == f"waiting for child run {child_id} (sleeper)"
    assert h.run(child_id)["parent_run_id"] == parent["id"]


def test_blocked_code_run_shows_its_divergence_and_resumes(code_stub: CodeApi) -> None:
    h = code_stub
    state = {"changed": False}

    @codeflows.tideflow.workflow(name="changing_api")
    def changing_api(ctx: Any) -> str:
        if state["changed"]:
            ctx.activity(codeflows.refund, 1)  # at position 0, where the history holds another call
        else:
            ctx.activity(codeflows.add, 1, 1)
        ctx.sleep(60)
        return "done"

    run_id = h.post("/api/runs", {"workflow": "changing_api"}).json()["id"]
    _error(h.post(f"/api/runs/{run_id}/resume"), 409, "conflict")  # running, not blocked
    state["changed"] = True
    h.fire_timers()
    run = h.run(run_id)
    assert run["state"] == "blocked" and run["waiting"] is None
    assert run["blocked"] == {"position": 0, "history": "activity 'add'", "asked": "activity 'refund'",
                              "message": run["error"]}
    assert [r["id"] for r in h.client.get("/api/runs?state=blocked", headers=AUTH).json()["items"]] == [run_id]

    state["changed"] = False
    resumed = h.post(f"/api/runs/{run_id}/resume")
    assert resumed.status_code == 200, resumed.text
    # the replay runs in the request: its timer had fired, so the run returns at once
    assert resumed.json()["state"] == "succeeded" and resumed.json()["blocked"] is None
    assert resumed.json()["result"] == "done"
    assert any(e["reason"] == "resumed" for e in h.client.get(f"/api/runs/{run_id}/history", headers=AUTH).json())
    _error(h.post("/api/runs/999999/resume"), 404, "not_found")


def test_workflow_grid_is_recent_runs_by_tasks_in_two_queries(api) -> None:
    """``GET /api/workflows/{name}/grid``: the most recent runs oldest first, one row per task name (newest
    run's order, then names only older runs have), a cell per run (null where a run has no such task); the
    number of SQL statements does not grow with the runs."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    client, tf = api
    client.post("/api/workflows", json=HELLO, headers=AUTH)
    first = client.post("/api/runs", json={"workflow": "hello"}, headers=AUTH).json()["id"]
    client.post(f"/api/runs/{first}/cancel", headers=AUTH)
    v2 = {**HELLO, "tasks": [*HELLO["tasks"], {"name": "c", "type": "shell", "command": "echo c"}]}
    assert client.post("/api/workflows", json=v2, headers=AUTH).json()["version"] == 2
    ids = [first] + [client.post("/api/runs", json={"workflow": "hello"}, headers=AUTH).json()["id"]
                     for _ in range(3)]

    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        grid = client.get("/api/workflows/hello/grid?limit=3", headers=AUTH)
        few = len(statements)
        statements.clear()
        everything = client.get("/api/workflows/hello/grid?limit=50", headers=AUTH)
        many = len(statements)
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert grid.status_code == 200, grid.text
    body = grid.json()
    assert body["workflow"] == "hello"
    assert [(r["id"], r["version"], r["state"], r["kind"]) for r in body["runs"]] == [
        (i, 2, "running", "dag") for i in ids[1:]]
    assert [t["name"] for t in body["tasks"]] == ["a", "b", "c"]
    a = body["tasks"][0]["cells"]
    assert [c["state"] for c in a] == ["submitted"] * 3 and [c["attempt"] for c in a] == [1, 1, 1]
    assert [c["state"] for c in body["tasks"][1]["cells"]] == ["pending"] * 3
    run = client.get(f"/api/runs/{ids[1]}", headers=AUTH).json()
    assert a[0]["task_run_id"] == next(t["id"] for t in run["tasks"] if t["name"] == "a")

    whole = everything.json()
    assert [r["id"] for r in whole["runs"]] == ids
    cells = {t["name"]: t["cells"] for t in whole["tasks"]}
    assert cells["c"][0] is None and all(c is not None for c in cells["c"][1:])  # v1 had no task c
    assert [c["state"] for c in cells["a"]] == ["cancelled", "submitted", "submitted", "submitted"]
    selects = [q for q in statements if q.lstrip().upper().startswith("SELECT")]
    assert many == few and len(selects) == 2, statements  # the runs, then all their tasks

    assert client.get("/api/workflows/nope/grid", headers=AUTH).status_code == 404
    _error(client.get("/api/workflows/hello/grid?limit=0", headers=AUTH), 422, "invalid_request")
    _error(client.get("/api/workflows/hello/grid?limit=101", headers=AUTH), 422, "invalid_request")


def test_workflow_grid_of_a_code_workflow(code_api) -> None:
    """A code workflow's grid: its steps (name#position) as rows; a code workflow no run has stored yet has an
    empty grid, not a 404."""
    client, _tf = code_api
    empty = client.get("/api/workflows/adder/grid", headers=AUTH)
    assert empty.status_code == 200 and empty.json() == {"workflow": "adder", "runs": [], "tasks": []}
    run = client.post("/api/runs", json={"workflow": "adder", "params": {"x": 1}}, headers=AUTH).json()
    grid = client.get("/api/workflows/adder/grid", headers=AUTH).json()
    assert [(r["id"], r["kind"]) for r in grid["runs"]] == [(run["id"], "code")]
    steps = client.get(f"/api/runs/{run['id']}", headers=AUTH).json()["tasks"]
    assert [t["name"] for t in grid["tasks"]] == [t["name"] for t in sorted(steps, key=lambda t: t["seq"])]
    assert [t["cells"][0]["task_run_id"] for t in grid["tasks"]] == [t["id"] for t in
                                                                     sorted(steps, key=lambda t: t["seq"])]


# -- live logs: a real worker, the web process, HTTP ---------------------------------------------------------

CHATTY = {
    "name": "chatty", "params": {"gate": ""},
    "tasks": [
        {"name": "py", "type": "python", "function": "tests.support.jobs:print_then_wait",
         "args": {"text": "python says hi", "gate": "{{ params.gate }}"}},
        {"name": "sh", "type": "shell",
         "command": "echo shell says hi; while [ ! -e {{ params.gate }} ]; do sleep 0.05; done; echo bye"},
    ],
}


def test_a_running_attempts_output_is_served_before_it_ends(cluster, tmp_path) -> None:
    """``GET /api/tasks/{id}/logs`` shows what a running attempt printed (python and shell bodies) while it
    still runs: the worker's heartbeat stores the output so far. At the end the full output replaces it."""
    import httpx

    from tests.support.wait import wait_until

    cluster.start_worker(concurrency=2)
    _web, base_url = cluster.start_web()
    gate = tmp_path / "gate"
    with httpx.Client(base_url=base_url, headers={"Authorization": "Bearer test-token"}, timeout=30) as http:
        assert http.post("/api/workflows", json=CHATTY).status_code == 201
        run = http.post("/api/runs", json={"workflow": "chatty", "params": {"gate": str(gate)}}).json()
        ids = {t["name"]: t["id"] for t in run["tasks"]}

        def live(task_id: int, line: str) -> dict | None:
            logs = http.get(f"/api/tasks/{task_id}/logs").json()
            shown = [a for a in logs["attempts"] if a["outcome"] == "running" and line in a["log"]]
            return logs if shown else None

        for name, line in (("py", "python says hi"), ("sh", "shell says hi")):
            logs = wait_until(lambda: live(ids[name], line), timeout=30, interval=0.2,  # noqa: B023
                              message=f"task {name}'s output never showed while it ran")
            assert logs["state"] == "running"  # gated: it cannot have ended
        assert not gate.exists()

        gate.touch()
        wait_until(lambda: http.get(f"/api/runs/{run['id']}").json()["state"] == "succeeded", timeout=30,
                   interval=0.2, message="the run never succeeded")
        final = {name: http.get(f"/api/tasks/{i}/logs").json()["attempts"] for name, i in ids.items()}
    assert [(a["outcome"], a["log"]) for a in final["py"]] == [("succeeded", "python says hi\n")]
    assert [(a["outcome"], a["log"]) for a in final["sh"]] == [("succeeded", "shell says hi\nbye\n")]


TYPED: dict = {
    "name": "typed-dag", "params": {"n": {"type": "integer", "description": "how many"}, "version": "1.10",
                                "dry": False},
    "tasks": [{"name": "a", "type": "shell", "command": "echo {{ params.n }} {{ params.version }}"}],
}


def test_workflow_views_carry_typed_parameters(api) -> None:
    """The views (list and show) carry the declared parameters with their types, for the start form."""
    client, _tf = api
    assert client.post("/api/workflows", json=TYPED, headers=AUTH).status_code == 201
    expected = [
        {"name": "n", "type": "integer", "default": None, "required": True, "description": "how many",
         "enum": None},
        {"name": "version", "type": "string", "default": "1.10", "required": False, "description": "",
         "enum": None},
        {"name": "dry", "type": "boolean", "default": False, "required": False, "description": "", "enum": None},
    ]
    assert client.get("/api/workflows/typed-dag", headers=AUTH).json()["parameters"] == expected
    (listed,) = [w for w in client.get("/api/workflows", headers=AUTH).json() if w["name"] == "typed-dag"]
    assert listed["parameters"] == expected


def test_a_parameter_of_the_wrong_type_is_a_422_and_nothing_is_stored(api) -> None:
    client, tf = api
    assert client.post("/api/workflows", json=TYPED, headers=AUTH).status_code == 201
    before = row_counts(tf)
    body = _error(client.post("/api/runs", json={"workflow": "typed-dag", "params": {"n": "3", "version": 1.1}},
                              headers=AUTH), 422, "invalid_definition")
    assert body["message"] == ("workflow 'typed-dag': parameter 'n' (integer): \"3\" is not an integer; "
                               "workflow 'typed-dag': parameter 'version' (string): 1.1 is not a string")
    assert "\n" not in body["message"]
    _error(client.post("/api/runs", json={"workflow": "typed-dag"}, headers=AUTH), 422, "invalid_definition")
    assert row_counts(tf) == before
    ok = client.post("/api/runs", json={"workflow": "typed-dag", "params": {"n": 3}}, headers=AUTH)
    assert ok.status_code == 201 and ok.json()["params"] == {"n": 3, "version": "1.10", "dry": False}


def test_the_python_client_checks_the_same_types(api) -> None:
    """``Tideflow.start_run`` goes through the same check as the API (app/params.py): a wrong type raises, nothing
    is stored or published; ``check_start`` (``run start --dry-run``) answers the params a start would store."""
    from app.errors import DefinitionError

    _client, tf = api
    tf.register(TYPED)
    before, sent = row_counts(tf), tf.runtime.dispatcher.executed[:]
    with pytest.raises(DefinitionError, match=r"^workflow 'typed-dag': parameter 'dry' \(boolean\): \"no\" is not a "
                                              r"boolean$"):
        tf.start_run("typed-dag", {"n": 1, "dry": "no"})
    assert tf.check_start("typed-dag", {"n": 2}) == {"n": 2, "version": "1.10", "dry": False}
    with pytest.raises(DefinitionError, match="parameter 'n' is required"):
        tf.check_start("typed-dag", {})
    assert row_counts(tf) == before and tf.runtime.dispatcher.executed == sent


def _python_task(function: str, args: dict) -> dict:
    return {"name": "py", "tasks": [{"name": "job", "type": "python", "function": function, "args": args}]}


def test_register_checks_python_signatures_and_warns_when_it_cannot(api) -> None:
    client, tf = api
    before = row_counts(tf)
    body = _error(client.post("/api/workflows", json=_python_task("tests.support.jobs:record", {"valu": 1}),
                              headers=AUTH), 422, "invalid_definition")
    assert body["message"] == ("task 'job': function 'tests.support.jobs:record' (context, value) does not take "
                               "its args: got an unexpected keyword argument 'valu'")
    assert row_counts(tf) == before
    elsewhere = client.post("/api/workflows", json=_python_task("not_here.jobs:run", {"x": 1}), headers=AUTH)
    assert elsewhere.status_code == 201, elsewhere.text
    assert elsewhere.json()["warnings"] == [
        "task 'job': module 'not_here.jobs' is not importable here: the signature of 'not_here.jobs:run' is not "
        "checked"]


def test_register_never_imports_a_module_outside_tideflow_python_modules(db_url: str, tmp_path, monkeypatch) -> None:
    """TIDEFLOW_PYTHON_MODULES bounds what registration imports too: a module outside it is not imported (its
    top-level code does not run), only warned about."""
    (tmp_path / "tf_forbidden_mod.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n"
                                                  "def run(x): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    client, tf = make_client(db_url, python_modules="tests.support")
    try:
        resp = client.post("/api/workflows", json=_python_task("tf_forbidden_mod:run", {"y": 1}), headers=AUTH)
        assert resp.status_code == 201, resp.text
        assert resp.json()["warnings"] == ["task 'job': function 'tf_forbidden_mod:run' is outside "
                                           "TIDEFLOW_PYTHON_MODULES: not imported, its signature not checked"]
        assert not (tmp_path / "imported").exists()
    finally:
        tf.close()


def test_register_checks_what_a_subworkflow_task_passes_against_the_childs_types(api) -> None:
    """A value whose type is known at registration (a literal, ``{{ run.id }}``, one parent parameter) must fit
    the child's declared type, and every required child parameter must be passed; an upstream result is only
    known when it runs (the child's start checks it then)."""
    client, tf = api
    assert client.post("/api/workflows", json=TYPED, headers=AUTH).status_code == 201  # n: integer, required

    def parent(params: dict, declared: dict | None = None) -> dict:
        return {"name": "parent", "params": declared or {"day": "2026-01-01", "count": 2},
                "tasks": [{"name": "u", "type": "shell", "command": "echo 1"},
                          {"name": "kid", "type": "subworkflow", "workflow": "typed-dag", "params": params,
                           "depends_on": ["u"]}]}

    before = row_counts(tf)
    cases = {
        "literal": ({"n": "3"}, "task 'kid': params: 'n' (integer in workflow 'typed-dag'): \"3\" is not an integer"),
        "parent param": ({"n": "{{ params.day }}"},
                         "task 'kid': params: 'n' (integer in workflow 'typed-dag'): '{{ params.day }}' is a string"),
        "text around": ({"n": "run {{ run.id }}"},
                        "task 'kid': params: 'n' (integer in workflow 'typed-dag'): 'run {{ run.id }}' is a string"),
        "run id to a string": ({"n": 1, "version": "{{ run.id }}"}, "task 'kid': params: 'version' (string in "
                               "workflow 'typed-dag'): '{{ run.id }}' is an integer"),
        "missing": ({"dry": True}, "task 'kid': params: workflow 'typed-dag' requires parameter 'n'"),
    }
    for label, (params, message) in cases.items():
        body = _error(client.post("/api/workflows", json=parent(params), headers=AUTH), 422, "invalid_definition")
        assert body["message"] == message, label
    assert row_counts(tf) == before
    for params in ({"n": "{{ params.count }}"}, {"n": "{{ run.id }}"}, {"n": "{{ upstream.u }}"}, {"n": 4}):
        ok = client.post("/api/workflows", json=parent(params), headers=AUTH)
        assert ok.status_code in (200, 201), (params, ok.text)
