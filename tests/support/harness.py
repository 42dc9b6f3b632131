"""In-process access to a test cluster's database and broker, with the same settings as its processes."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import OperationalError

from app.client import Tideflow
from app.config import Settings
from app.db import repository as repo
from app.services import views
from tests.support.cluster import Cluster
from tests.support.wait import wait_until


def settings_for(cluster: Cluster, **overrides: Any) -> Settings:
    fields = Settings.model_fields
    kw: dict[str, Any] = {}
    for key, value in cluster.env.items():
        name = key[len("TIDEFLOW_"):].lower() if key.startswith("TIDEFLOW_") else None
        if name in fields:
            kw[name] = value
    kw.update(overrides)
    return Settings(**kw)


def client_for(cluster: Cluster, **overrides: Any) -> Tideflow:
    return Tideflow.from_env(settings_for(cluster, **overrides))


def run_state(tf: Tideflow, run_id: int) -> str:
    return str(tf.run(run_id)["state"])


def wait_run(tf: Tideflow, run_id: int, state: str = "succeeded", timeout: float = 60.0) -> dict[str, Any]:
    """Poll until the run is terminal; assert it ended in ``state``."""
    def finished() -> dict[str, Any] | None:
        data = tf.run(run_id)
        return data if data["state"] in ("succeeded", "failed", "cancelled") else None

    # a database outage test kills our own connections too: polling goes on through it
    final = wait_until(finished, timeout=timeout, message=f"run {run_id} did not finish",
                       ignore=(OperationalError,))
    assert final is not None
    assert final["state"] == state, f"run {run_id} ended {final['state']}, expected {state}: {final}"
    return final


def history(tf: Tideflow, run_id: int) -> list[dict[str, Any]]:
    with tf.runtime.db.read() as s:
        return views.run_history(s, run_id)


def live_tasks(tf: Tideflow) -> dict[str, int]:
    with tf.runtime.db.read() as s:
        counts = repo.count_tasks_by_state(s)
    return {k: v for k, v in counts.items() if k in ("pending", "submitted", "running")}
