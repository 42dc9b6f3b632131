"""An in-process API (FastAPI TestClient) on a test database, for tests of the HTTP layer itself.

The dispatcher records messages instead of publishing them: these tests are about requests, responses
and what is stored, never about delivery (the acceptance and UI tests use real workers for that)."""

from __future__ import annotations

import warnings
from typing import Any

from sqlalchemy import func, select

from app.client import Tideflow
from app.config import load_settings
from app.db.schema import Event, TaskAttempt, TaskRun, Workflow, WorkflowRun
from app.dispatch import RecordingDispatcher
from app.runtime import Runtime

with warnings.catch_warnings():  # starlette's TestClient warns that it will move from httpx to httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

HELLO: dict[str, Any] = {
    "name": "hello", "params": {"who": "world"},
    "tasks": [{"name": "a", "type": "shell", "command": "echo {{ params.who }}"},
              {"name": "b", "type": "shell", "command": "echo b", "depends_on": ["a"]}],
}


def make_client(database_url: str, **settings: Any) -> tuple[TestClient, Tideflow]:
    from app.api.app import create_app

    s = load_settings(database_url=database_url, **{"api_token": TOKEN, **settings})
    tf = Tideflow(Runtime.create(s, RecordingDispatcher()))
    return TestClient(create_app(s, tf), raise_server_exceptions=False), tf


def row_counts(tf: Tideflow) -> dict[str, int]:
    """How many rows each table holds: a rejected request must not change any of them."""
    with tf.runtime.db.read() as s:
        return {t.__tablename__: int(s.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (Workflow, WorkflowRun, TaskRun, TaskAttempt, Event)}
