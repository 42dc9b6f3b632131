"""A shell body's process tree dies with the process that supervises it, with real ``celery worker`` processes:
SIGKILL of the pool process running the body, or of the worker's main process (the pool processes die with it:
Celery gives them PR_SET_PDEATHSIG SIGKILL, celery/concurrency/prefork.py ``process_initializer``). The body
(``tests/support/shellbody.py``) forks children, one of which leaves its process group and session; all of them
must be dead within a few seconds, before the reconciler declares the attempt lost (lease: 3 s here), and the
retry must not overlap with anything of attempt 1.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from app.db import repository as repo
from tests.support.harness import client_for, history, wait_run
from tests.support.shellbody import (
    WITH_LOG_PARAM,
    assert_attempts_never_overlap,
    body_is_up,
    kill_body,
    wait_body_dead,
)
from tests.support.wait import wait_until


@pytest.fixture
def cluster_db_url(pg_url):
    return pg_url


@pytest.mark.parametrize("victim", ["pool process", "main process"])
def test_shell_body_dies_with_its_worker_before_the_attempt_is_lost(cluster, tmp_path, victim):
    log = tmp_path / "body.log"
    tf = client_for(cluster)
    tf.register({"name": "reap", "params": {"log": ""}, "tasks": [
        {"name": "long", "type": "shell", "command": WITH_LOG_PARAM, "retries": 1, "retry_delay": 0}]})
    w1 = cluster.start_worker("w1", concurrency=1)
    cluster.start_beat()
    try:
        run_id = tf.start_run("reap", {"log": str(log)})
        wait_until(lambda: body_is_up(log), timeout=30, message="the body's processes never all started")
        with tf.runtime.db.read() as s:
            (task,) = repo.run_tasks(s, run_id)
            (attempt,) = repo.attempts(s, [task.id])
        assert task.state == "running" and attempt.outcome == "running"
        (pool,) = w1.children()
        assert attempt.pid == pool

        killed = time.time()
        if victim == "pool process":
            os.kill(pool, signal.SIGKILL)
        else:
            os.kill(w1.pid, signal.SIGKILL)
        dead = wait_body_dead(log, timeout=10, what=f"its worker's {victim}")
        assert dead - killed < 3.0, f"the body took {dead - killed:.2f}s to die"
        if victim == "main process":
            cluster.start_worker("w2", concurrency=1)

        run = wait_run(tf, run_id, "succeeded", timeout=60)
        (long,) = run["tasks"]
        assert [a["outcome"] for a in long["attempts"]] == ["lost", "succeeded"]
        assert long["result"] == "done 2"
        lost = next(e for e in history(tf, run_id) if e["actor"] == "reconciler" and "lease expired" in e["reason"])
        with tf.runtime.db.read() as s:
            lost_at = repo.attempts(s, [task.id])[0].finished_at.timestamp()
        assert dead < lost_at, f"the body died {dead - lost_at:.2f}s after its attempt was declared lost ({lost})"
        lines = assert_attempts_never_overlap(log)
        ticks = {line.pid for line in lines[1] if line.event == "tick"}
        assert len(ticks) == 2, lines[1]  # both background loops of attempt 1 ran
        assert not [line for line in lines[1] if line.event == "end"]  # attempt 1 was killed, never finished
        assert [line.event for line in lines[2]] == ["start", "end"]
    finally:
        kill_body(log)
        tf.close()
