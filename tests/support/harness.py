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


def max_overlap(intervals: list[tuple[Any, Any]]) -> int:
    """The most of these ``[start, end)`` intervals open at any instant (``end`` None: still open)."""
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals if end is not None],
                    key=lambda p: (p[0], p[1]))  # at the same instant an end comes before a start: [start, end)
    most = current = 0
    for _, step in points:
        current += step
        most = max(most, current)
    return most


def pool_attempts(tf: Tideflow, pool: str) -> list[tuple[Any, Any]]:
    """The attempts ledger of a pool's tasks: each attempt's ``[started_at, finished_at)``."""
    from sqlalchemy import select

    with tf.runtime.db.read() as s:
        rows = s.execute(select(repo.A.c.started_at, repo.A.c.finished_at)
                         .join(repo.T, repo.T.c.id == repo.A.c.task_run_id).where(repo.T.c.pool == pool)).all()
    return [(r.started_at, r.finished_at) for r in rows]
