"""The lease keeper's heartbeat thread is started only when it has something to do (the first renewal or the
task's timeout): a body that ends sooner costs no thread; a longer one is renewed and timed out as before."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest

from app.db import repository as repo
from app.services.lease import _STARTER, LeaseKeeper
from tests.integration.test_protocol import ECHO, Harness, _claim_first


@pytest.fixture
def h(db_url: str) -> Iterator[Harness]:
    harness = Harness(db_url, lease_seconds=3.0, heartbeat_seconds=0.3)
    try:
        yield harness
    finally:
        harness.rt.close()


def _keeper(h: Harness, timeout: float | None = None) -> tuple[LeaseKeeper, int]:
    h.register("wf", [{"name": "x", "type": "python", "function": ECHO, "args": {"v": 1}}])
    h.tf.start_run("wf")
    claimed = _claim_first(h, "tok")
    keeper = LeaseKeeper(h.rt, claimed.id, "tok", timeout=timeout, stop=threading.Event(), interrupt_main=False,
                         hard_kill=False, attempt=claimed.attempt)
    return keeper, claimed.id


def _lease(h: Harness, task_id: int):  # type: ignore[no-untyped-def]
    with h.rt.db.read() as s:
        task = repo.get_task(s, task_id)
    assert task is not None
    return task.lease_expires_at


def test_a_short_body_starts_no_heartbeat_thread_and_is_not_kept_alive(h: Harness) -> None:
    keeper, _ = _keeper(h)
    with keeper:
        pass
    assert keeper._thread is None
    gone = [keeper]
    del keeper
    gone.clear()
    gc.collect()
    deadline = time.monotonic() + 5
    while any(ref() is not None for _, _, ref in list(_STARTER._heap)):  # held weakly: nothing keeps it
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_longer_body_is_renewed(h: Harness) -> None:
    keeper, task_id = _keeper(h)
    first = _lease(h, task_id)
    with keeper:
        deadline = time.monotonic() + 10
        while _lease(h, task_id) == first:
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.05)
    assert keeper._thread is not None and not keeper.reason


def test_a_timeout_shorter_than_the_heartbeat_stops_the_body_on_time(h: Harness) -> None:
    keeper, _ = _keeper(h, timeout=0.2)
    began = time.monotonic()
    with keeper:
        assert keeper.stop.wait(5), "the body was never told to stop"
        took = time.monotonic() - began
    assert keeper.timed_out and 0.2 <= took < 1.0, took
