"""The CLI's ``--json`` output is a stable interface, and the same one as the REST API's: every command's keys are
exactly the fields of the API's response model for the same object (``app/api/schemas.py``), it validates
against that model, and it is equal to what the API returns for the same object. So the two cannot drift apart.
Also: ``run start --wait`` output to a pipe is plain text (no terminal control codes)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from pydantic import BaseModel

from app.api.schemas import (
    AttemptLog,
    AttemptView,
    EventView,
    Registered,
    RunDetail,
    RunSummary,
    TaskLogs,
    TaskView,
    WorkflowDetail,
    WorkflowSummary,
)
from tests.support.api import AUTH, make_client

HELLO = """\
name: hello
params: {who: world}
tasks:
  - {name: greet, type: shell, command: "echo hello {{ params.who }}"}
  - {name: shout, type: shell, command: "echo HELLO", depends_on: [greet]}
"""


@pytest.fixture
def cluster_db_url(pg_url):
    return pg_url


def keys(model: type[BaseModel]) -> set[str]:
    """The JSON keys of a response model (by alias: EventView's ``from_`` is ``from``)."""
    return {field.alias or name for name, field in model.model_fields.items()}


def _json(cluster: Any, *args: str) -> Any:
    return json.loads(cluster.run_cli(*args, "--json", check=True).stdout)


def _same_shape(data: dict[str, Any], model: type[BaseModel]) -> None:
    assert set(data) == keys(model), f"{model.__name__}: {sorted(set(data) ^ keys(model))}"
    model.model_validate(data)  # the models forbid extra keys and type every field


def _run_detail(data: dict[str, Any]) -> None:
    _same_shape(data, RunDetail)
    assert data["tasks"], data
    for task in data["tasks"]:
        _same_shape(task, TaskView)
        for attempt in task["attempts"]:
            _same_shape(attempt, AttemptView)


def test_json_output_has_the_api_models_keys_and_values(cluster, tmp_path):
    definition = tmp_path / "hello.yaml"
    definition.write_text(HELLO)

    registered = _json(cluster, "workflow", "register", str(definition))
    _same_shape(registered, Registered)
    assert registered == {"name": "hello", "version": 1, "created": True, "warnings": []}

    started = _json(cluster, "run", "start", "hello")  # no worker yet: the run is submitted, not finished
    _same_shape(started, RunDetail)
    assert started["state"] == "running" and started["workflow"] == "hello"

    cluster.start_worker("w1", concurrency=2)
    waited = _json(cluster, "run", "start", "hello", "-p", "who=json", "--wait", "--timeout", "60")
    _run_detail(waited)
    assert waited["state"] == "succeeded" and [a["outcome"] for a in waited["tasks"][0]["attempts"]] == ["succeeded"]
    run_id = waited["id"]

    shown = _json(cluster, "run", "show", str(run_id))
    _run_detail(shown)
    runs = _json(cluster, "run", "list")
    assert [r["id"] for r in runs] == [run_id, started["id"]]
    for r in runs:
        _same_shape(r, RunSummary)
    history = _json(cluster, "run", "history", str(run_id))
    assert history and "from" in history[0]
    for event in history:
        _same_shape(event, EventView)
    workflows = _json(cluster, "workflow", "list")
    for w in workflows:
        _same_shape(w, WorkflowSummary)
    workflow = _json(cluster, "workflow", "show", "hello")
    _same_shape(workflow, WorkflowDetail)
    logs = _json(cluster, "task", "logs", str(shown["tasks"][0]["id"]))
    _same_shape(logs, TaskLogs)
    for attempt in logs["attempts"]:
        _same_shape(attempt, AttemptLog)
    assert "hello json" in logs["attempts"][0]["log"]

    # the very same values as the API's
    client, tf = make_client(cluster.database_url)
    try:
        def api(path: str) -> Any:
            resp = client.get(path, headers=AUTH)
            assert resp.status_code == 200, (path, resp.text)
            return resp.json()

        assert api(f"/api/runs/{run_id}") == shown
        assert api("/api/runs")["items"] == runs
        assert api(f"/api/runs/{run_id}/history") == history
        # the stored ones: the list also shows the code workflows the serving process registered and no run stored
        # yet, and this (pytest) process may have imported tests.support.codeflows, which the CLI's did not
        assert [w for w in api("/api/workflows") if w["version"] is not None] == workflows
        assert api("/api/workflows/hello") == workflow
        assert api(f"/api/tasks/{logs['task_run_id']}/logs") == logs
    finally:
        client.close()
        tf.close()


def test_wait_to_a_pipe_prints_the_final_progress_once_without_control_codes(cluster, tmp_path):
    definition = tmp_path / "hello.yaml"
    definition.write_text(HELLO)
    cluster.run_cli("workflow", "register", str(definition), check=True)
    cluster.start_worker("w1", concurrency=2)
    result = cluster.run_cli("run", "start", "hello", "--wait", "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\x1b" not in result.stdout, repr(result.stdout)  # stdout is a pipe: no colours, no cursor moves
    assert result.stdout.count("2/2 tasks") == 1, result.stdout  # rendered once, at the end
    assert re.search(r"greet\s.*succeeded", result.stdout) and re.search(r"shout\s.*succeeded", result.stdout)
