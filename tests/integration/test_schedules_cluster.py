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


def fire_rows(tf: Tideflow, name: str) -> list[Any]:
    with tf.runtime.db.read() as s:
        return list(s.execute(select(ScheduleFire.__table__).where(ScheduleFire.schedule_name == name)
                              .order_by(ScheduleFire.fire_time)))


def contiguous(rows: list[Any], step: timedelta) -> bool:
    times = [r.fire_time for r in rows]
    return all(b - a == step for a, b in zip(times, times[1:], strict=False))


@pytest.mark.cluster_env(TIDEFLOW_SCHEDULE_ON_TIME_SECONDS="1")
@pytest.mark.parametrize("catchup", ["all", "latest", "none"])
def test_catch_up_after_beat_was_stopped(cluster: Cluster, tf: Tideflow, catchup: str) -> None:
    tf.register({"name": "every2s", "schedule": {"cron": "*/2 * * * * *", "catchup": catchup,
                                                 "catchup_window": 600},
                 "tasks": [{"name": "t", "type": "shell", "command": "echo {{ schedule.time }}"}]})
    cluster.start_worker("w1", concurrency=2)
    beat = cluster.start_beat()
    wait_until(lambda: len(fire_rows(tf, "every2s")) >= 2, timeout=60, message="no fire times before the stop")
    beat.terminate()
    # the passes beat had already sent finish; then nothing is fired while it is down
    wait_until(lambda: poll_stable(lambda: len(fire_rows(tf, "every2s"))), timeout=20)
    before = len(fire_rows(tf, "every2s"))
    time.sleep(8)  # the downtime itself: ~4 fire times are missed
    assert len(fire_rows(tf, "every2s")) == before
    cluster.start_beat()
    wait_until(lambda: len(fire_rows(tf, "every2s")) >= before + 6, timeout=60, message="beat did not catch up")
    rows = fire_rows(tf, "every2s")
    assert contiguous(rows, timedelta(seconds=2)), [(r.fire_time, r.outcome) for r in rows]  # none lost or doubled
    after = rows[before:]
    skipped = [r for r in after if r.outcome == "skipped"]
    if catchup == "all":
        assert skipped == [] and all(r.outcome == "started" for r in rows)
    else:
        reason = "catchup: none" if catchup == "none" else "catchup: latest runs only the most recent"
        assert len(skipped) >= 2 and all(reason in r.reason and "missed by" in r.reason for r in skipped), skipped
        # the missed ones are the oldest of the downtime: everything after them started
        last_skip = max(r.fire_time for r in skipped)
        assert all(r.outcome == "started" for r in after if r.fire_time > last_skip)
    runs_ = runs(tf, "every2s")
    assert len(runs_) == sum(1 for r in rows if r.outcome == "started") == len({r.schedule_time for r in runs_})


def poll_stable(count: Any) -> bool:
    """True once ``count()`` has not changed for a second."""
    first = count()
    try:
        holds_for(lambda: count() == first, seconds=1.0, interval=0.1)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("overlap", ["skip", "buffer_one", "cancel_running"])
def test_overlap_policies_with_runs_longer_than_the_interval(cluster: Cluster, tf: Tideflow, overlap: str) -> None:
    tf.register({"name": "slow", "schedule": {"cron": "*/2 * * * * *", "overlap": overlap},
                 "tasks": [{"name": "t", "type": "shell", "command": "sleep 3.5"}]})
    cluster.start_worker("w1", concurrency=4)
    beat = cluster.start_beat()
    most, buffered = 0, set()
    deadline = time.monotonic() + 14
    while time.monotonic() < deadline:
        live = sum(1 for r in runs(tf, "slow") if r.state not in TERMINAL)
        most = max(most, live)
        buffered |= {f.fire_time for f in fire_rows(tf, "slow") if f.outcome == "buffered"}
        time.sleep(0.05)
    if overlap == "buffer_one":  # each fire time seen buffered starts once the run before it ends
        wait_until(lambda: {f.fire_time for f in fire_rows(tf, "slow") if f.outcome == "started"} >= buffered,
                   timeout=30, message="a buffered fire time never started")
    beat.terminate()
    rows = fire_rows(tf, "slow")
    assert contiguous(rows, timedelta(seconds=2))
    started = runs(tf, "slow")
    assert len(started) >= 2
    if overlap in ("skip", "buffer_one"):
        assert most == 1, f"{most} runs at once under overlap: {overlap}"
        skipped = [r for r in rows if r.outcome == "skipped"]
        assert skipped, "no fire time was skipped"
        if overlap == "skip":
            assert all(r.reason.startswith("overlap: skip (run ") for r in skipped)
        else:
            assert buffered and all("a fire time is already buffered" in r.reason for r in skipped)
    else:
        cancelled = [r for r in runs(tf, "slow") if r.state == "cancelled"]
        assert len(cancelled) >= 2 and all(f.outcome == "started" for f in rows)
        history = tf.read(__import__("app.services.views", fromlist=["run_history"]).run_history, cancelled[0].id)
        assert any("overlap: cancel_running" in e["reason"] for e in history)
