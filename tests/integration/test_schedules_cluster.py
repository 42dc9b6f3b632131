"""Cron schedules with real processes (PostgreSQL, Redis, ``celery beat`` and ``celery worker``): three beats over
several fire times (one of them killed) start exactly one run per fire time; a 48-hour backfill with ``--parallel 4``
never has more than 4 runs at once, oldest first, and running it again creates nothing new."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from app.client import Tideflow
from app.db.schema import ScheduleFire, WorkflowRun
from tests.support.cluster import Cluster
from tests.support.harness import client_for
from tests.support.wait import holds_for, wait_until

pytestmark = pytest.mark.cluster_env(TIDEFLOW_SCHEDULE_INTERVAL_SECONDS="0.3")
R = WorkflowRun.__table__.c
TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
def cluster_db_url(pg_url: str) -> str:
    return pg_url


@pytest.fixture
def tf(cluster: Cluster) -> Iterator[Tideflow]:
    client = client_for(cluster)
    yield client
    client.close()


def runs(tf: Tideflow, name: str) -> list[Any]:
    with tf.runtime.db.read() as s:
        return list(s.execute(select(WorkflowRun.__table__).where(R.schedule_name == name).order_by(R.id)))


def test_three_beats_one_killed_start_one_run_per_fire_time(cluster: Cluster, tf: Tideflow) -> None:
    tf.register({"name": "every2s", "schedule": {"cron": "*/2 * * * * *", "catchup": "all", "catchup_window": 600},
                 "tasks": [{"name": "t", "type": "shell", "command": "echo {{ schedule.time }}"}]})
    cluster.start_worker("w1", concurrency=2)
    cluster.start_worker("w2", concurrency=2)  # two masters: the passes of three beats run concurrently
    beats = [cluster.start_beat(name=f"beat{i}") for i in range(3)]
    wait_until(lambda: len(runs(tf, "every2s")) >= 3, timeout=60, message="no scheduled runs")
    beats[1].popen.send_signal(signal.SIGKILL)  # a beat killed mid-way: the others go on
    wait_until(lambda: len(runs(tf, "every2s")) >= 8, timeout=60, message="scheduling stopped after the kill")
    for b in (beats[0], beats[2]):
        b.terminate()
    time.sleep(1.0)  # passes already published finish
    rows = runs(tf, "every2s")
    times = [r.schedule_time for r in rows]
    assert len(times) == len(set(times)), "a fire time started two runs"
    ordered = sorted(times)
    assert all(b - a == timedelta(seconds=2) for a, b in zip(ordered, ordered[1:], strict=False)), ordered
    with tf.runtime.db.read() as s:
        fires = s.execute(select(ScheduleFire.outcome, func.count()).where(ScheduleFire.schedule_name == "every2s")
                          .group_by(ScheduleFire.outcome)).all()
    assert dict(fires) == {"started": len(rows)}  # nothing skipped, one fire row per run
    for r in rows[:3]:  # the run processed its own logical time
        view = wait_until(lambda r=r: (v := tf.run(r.id))["state"] in TERMINAL and v, timeout=30)
        assert view["state"] == "succeeded"
        assert view["tasks"][0]["result"] == r.schedule_time.isoformat()


def test_backfill_48_hourly_fire_times_parallel_4(cluster: Cluster, tf: Tideflow) -> None:
    tf.register({"name": "hourly", "schedule": {"cron": "0 * * * *"},
                 "tasks": [{"name": "t", "type": "shell", "command": "sleep 0.2; echo {{ schedule.time }}"}]})
    cluster.start_worker("w1", concurrency=4)
    cluster.start_beat()
    args = ("schedule", "backfill", "hourly", "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T23:00:00Z",
            "--parallel", "4")
    out = cluster.run_cli(*args, check=True).stdout
    assert "48 run(s) queued" in out  # and the CLI has exited: beat's passes drive it
    most = 0
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        rows = runs(tf, "hourly")
        live = sum(1 for r in rows if r.state not in TERMINAL)
        most = max(most, live)
        assert live <= 4, f"{live} backfill runs at once"
        if len(rows) == 48 and live == 0:
            break
        time.sleep(0.02)
    rows = runs(tf, "hourly")
    assert len(rows) == 48 and all(r.state == "succeeded" for r in rows)
    assert most >= 2  # it did run them in parallel
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert [r.schedule_time for r in rows] == [start + timedelta(hours=h) for h in range(48)]  # oldest first
    again = cluster.run_cli(*args, check=True).stdout
    assert "nothing new" in again
    holds_for(lambda: len(runs(tf, "hourly")) == 48, seconds=2)
    show = cluster.run_cli("schedule", "show", "hourly", check=True).stdout
    assert "done (48 done, 0 running, 0 waiting)" in show
