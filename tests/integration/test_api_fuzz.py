"""Fuzz the REST API from its own OpenAPI document (schemathesis: valid and invalid requests for every
operation) against PostgreSQL: no 5xx, every response matches its documented schema and status, and a
rejected request (4xx) changes no row in any table and publishes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import text

from app.params import is_spec, json_type
from tests.support.api import AUTH, HELLO, make_client, row_counts

EXAMPLES = 40  # per operation and mode: ~1,000 requests in all, about a minute


@pytest.fixture
def api(pg_url: str) -> Iterator[Any]:
    client, tf = make_client(pg_url, workflow_modules="tests.support.codeflows")
    # something to find: two workflows (one with a declared parameter), a running and a cancelled run, and a code
    # run (3) waiting for signals (what POST /api/runs/{id}/signals/{name} and /resume act on)
    client.post("/api/workflows", json=HELLO, headers=AUTH)
    client.post("/api/workflows", json={**HELLO, "name": "other", "params": {}}, headers=AUTH)
    for _ in range(2):
        client.post("/api/runs", json={"workflow": "hello"}, headers=AUTH)
    client.post("/api/runs/1/cancel", headers=AUTH)
    assert client.post("/api/runs", json={"workflow": "approval"}, headers=AUTH).json()["id"] == 3
    try:
        yield client, tf
    finally:
        tf.close()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_api_fuzz(api: Any, mode: GenerationMode) -> None:
    """Every operation of the OpenAPI document, with generated valid (or invalid) requests. (schemathesis'
    pytest loader ``from_fixture`` does not run under pytest 9, so the Hypothesis loop is written out.)

    Excluded check: ``positive_data_acceptance`` (a schema-valid request must succeed). Some rules are not
    expressible in JSON Schema and are rejected with 422 by design: a shell task without ``command``, a
    cycle, an undeclared run parameter, a subworkflow that is not registered."""
    client, tf = api
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", client.app)
    # the bearer scheme's header is not generated (nor left out as "invalid"): every case sends the admin token
    schema.config.generation.update(with_security_parameters=False)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    assert {"POST /api/runs/{run_id}/signals/{name}", "POST /api/runs/{run_id}/resume"} <= {
        op.label for op in operations}

    for operation in operations:
        has_input = any(len(getattr(operation, part)) for part in ("path_parameters", "query", "body"))
        if mode is GenerationMode.NEGATIVE and not has_input:
            continue  # nothing to make invalid (GET /api/health, GET /api/workflows)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            before = row_counts(tf)
            sent = len(tf.runtime.dispatcher.executed) + len(tf.runtime.dispatcher.advanced)
            response = case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])
            assert response.status_code < 500, response.text
            if response.status_code >= 400:
                assert row_counts(tf) == before, f"{case.method} {case.path} -> {response.status_code} stored rows"
                assert len(tf.runtime.dispatcher.executed) + len(tf.runtime.dispatcher.advanced) == sent

        try:
            check()
        except Exception as exc:
            raise AssertionError(f"{operation.label}: {exc}") from exc


NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]{0,20}", fullmatch=True)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


#: a value of a parameter's declared type (app/params.py: inferred from its default; a null default takes any)
OF_TYPE = {
    "string": st.text(max_size=20), "integer": st.integers(-(2**53), 2**53), "boolean": st.booleans(),
    "number": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
    "array": st.lists(JSON_VALUES, max_size=3), "object": st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=3),
    "any": JSON_VALUES,
}


@st.composite
def definitions(draw: st.DrawFn) -> dict[str, Any]:
    """Valid definitions: a random DAG of shell tasks with arbitrary text in commands, params and description."""
    task_names = draw(st.lists(NAMES, min_size=1, max_size=8, unique=True))
    tasks = []
    for i, name in enumerate(task_names):
        deps = draw(st.lists(st.sampled_from(task_names[:i]), unique=True, max_size=3)) if i else []
        tasks.append({"name": name, "type": "shell", "command": draw(st.text(min_size=1, max_size=40)),
                      "depends_on": deps, "retries": draw(st.integers(0, 3))})
    return {"name": draw(NAMES), "description": draw(st.text(max_size=40)),
            "params": draw(st.dictionaries(NAMES, JSON_VALUES.filter(lambda v: not is_spec(v)), max_size=3)),
            "priority": draw(st.integers(0, 9)),
            "tasks": tasks}


@given(definition=definitions(), data=st.data())
@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_valid_requests_store_exactly_what_they_say(pg_url: str, definition: dict[str, Any],
                                                    data: st.DataObject) -> None:
    """The other side of the fuzz, which mostly meets rejections: generated *valid* definitions and runs (any
    text in commands, params and descriptions, including NUL and other control characters) are stored, once,
    read back unchanged, and can be cancelled and retried."""
    client, tf = make_client(pg_url)
    try:
        before = row_counts(tf)
        registered = client.post("/api/workflows", json=definition, headers=AUTH)
        assert registered.status_code in (200, 201), registered.text
        stored = client.get(f"/api/workflows/{definition['name']}", headers=AUTH).json()["definition"]
        assert stored["tasks"][0]["command"] == definition["tasks"][0]["command"]
        assert stored["params"] == definition["params"] and stored["description"] == definition["description"]

        params = {k: data.draw(OF_TYPE[json_type(v)], label=k) for k, v in definition["params"].items()
                  if data.draw(st.booleans(), label=f"override {k}")}
        priority = data.draw(st.none() | st.integers(0, 9), label="priority")
        sent = len(tf.runtime.dispatcher.executed)
        started = client.post("/api/runs", json={"workflow": definition["name"], "params": params,
                                                 "priority": priority}, headers=AUTH)
        assert started.status_code == 201, started.text
        run = started.json()
        n = len(definition["tasks"])
        after = row_counts(tf)
        assert after["workflow_runs"] - before["workflow_runs"] == 1
        assert after["task_runs"] - before["task_runs"] == n
        roots = [t["name"] for t in definition["tasks"] if not t["depends_on"]]
        assert len(tf.runtime.dispatcher.executed) - sent == len(roots)
        assert run["params"] == {**definition["params"], **params}
        assert run["priority"] == (definition["priority"] if priority is None else priority)

        assert client.post(f"/api/runs/{run['id']}/cancel", headers=AUTH).json()["state"] == "cancelled"
        retried = client.post(f"/api/runs/{run['id']}/retry", headers=AUTH)
        assert retried.status_code == 200 and retried.json()["reset"] == n, retried.text
    finally:
        with tf.runtime.db.transaction() as s:  # a fresh database per example would be slow: empty it instead
            for table in ("events", "task_attempts"):
                s.execute(text(f"DELETE FROM {table}"))
            s.execute(text("UPDATE workflow_runs SET parent_task_run_id = NULL"))
            for table in ("task_runs", "workflow_runs", "workflows"):
                s.execute(text(f"DELETE FROM {table}"))
        tf.close()
