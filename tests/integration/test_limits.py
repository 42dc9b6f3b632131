"""Concurrency limits (app/services/limits.py), in process on PostgreSQL and SQLite: the stub broker delivers
messages through the worker services, so admission, release and the reconciler's backstop are checked step by
step. Real worker processes killed and messages lost: test_limits_delivery.py and the chaos campaign."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import update

from app.clock import utcnow
from app.db import repository as repo
from app.db.schema import TaskRun
from app.services.reconciler import reconcile_once
from tests.integration.test_protocol import ECHO, Harness
from tests.support.harness import max_overlap, pool_attempts


def _pooled(*names: str, **extra: object) -> list[dict[str, object]]:
    return [{"name": n, "type": "python", "function": ECHO, "pool": "db", **extra} for n in names]


def test_a_full_pool_keeps_tasks_submitted_and_a_freed_slot_starts_the_next(db_url):
    h = Harness(db_url)
    h.tf.set_pool("db", 1)
    h.register("pooled", _pooled("a", "b", "c"))
    run_id = h.tf.start_run("pooled")
    # a worker claims a and dies (its attempt holds the slot until its lease lapses); b and c find no slot
    done = h.stub.drain(h.rt, crash=lambda label, attempt: label.endswith("/a"))
    assert done.crashed == [("pooled/a", 1)]
    assert sorted(o for _, _, o in done.executed) == ["waiting", "waiting"]
    tasks = h.tasks(h.tf.run(run_id))
    assert tasks["a"]["state"] == "running" and tasks["a"]["waiting_for"] is None
    assert {n: (tasks[n]["state"], tasks[n]["waiting_for"]) for n in "bc"} == {
        n: ("submitted", "pool db: 1/1 in use") for n in "bc"}
    assert h.tf.pools() == [{"name": "db", "slots": 1, "running": 1, "waiting": 2, "free": 0, "rate_limit": None}]
    from app.metrics import Metrics

    body = Metrics(h.rt).render()[0].decode()
    for line in ('tideflow_pool_slots{pool="db"} 1.0', 'tideflow_pool_slots_in_use{pool="db"} 1.0',
                 'tideflow_pool_waiting_tasks{pool="db"} 2.0'):
        assert line in body, body
    assert not h.stub.queue  # refused claims are acknowledged: no message loops

    # a's lease lapses: the reconciler declares it lost, which frees its slot and re-publishes the next task (b:
    # ready first); each finish then releases the next
    with h.rt.db.transaction() as s:
        s.execute(update(TaskRun).where(TaskRun.id == tasks["a"]["id"])
                  .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    reconcile_once(h.rt)
    first = [m for kind, m in h.stub.queue if kind == "execute"]
    assert [m["label"] for m in first][:1] == ["pooled/b"]
    h.stub.drain(h.rt)
    run = h.tf.run(run_id)
    assert run["state"] == "succeeded", run
    assert [a["outcome"] for a in h.tasks(run)["a"]["attempts"]] == ["lost", "succeeded"]
    assert max_overlap(pool_attempts(h.tf, "db")) == 1
    assert h.tf.pools() == [{"name": "db", "slots": 1, "running": 0, "waiting": 0, "free": 1, "rate_limit": None}]
    events = [e for e in h.tf.read(lambda s: [dict(r._mapping) for r in repo.run_events(s, run_id)])
              if "slot of pool db is free" in e["reason"]]
    assert events, "the release is recorded in the run's history"


def test_waiting_tasks_start_by_priority_then_first_come(db_url):
    h = Harness(db_url)
    h.tf.set_pool("db", 1)
    h.register("blocker", _pooled("hold"))
    h.register("low", _pooled("l"), priority=1)
    h.register("high", _pooled("h"), priority=9)
    blocker = h.tf.start_run("blocker")
    h.stub.drain(h.rt, crash=lambda label, attempt: True)  # holds the only slot
    low1, low2 = h.tf.start_run("low"), h.tf.start_run("low")
    high = h.tf.start_run("high")
    h.stub.drain(h.rt)  # all three wait
    hold = h.tasks(h.tf.run(blocker))["hold"]
    with h.rt.db.transaction() as s:
        s.execute(update(TaskRun).where(TaskRun.id == hold["id"]).values(lease_expires_at=utcnow()))
    order: list[int] = []
    reconcile_once(h.rt)
    while h.stub.queue:
        kind, body = h.stub.queue[0]
        if kind == "execute":
            with h.rt.db.read() as s:
                task = repo.get_task(s, int(body["task_run_id"]))
            assert task is not None
            if task.run_id not in order and task.run_id != blocker:
                order.append(task.run_id)
        _one(h)
    assert order[:3] == [high, low1, low2]
    for r in (low1, low2, high):
        assert h.tf.run(r)["state"] == "succeeded"


def _one(h: Harness) -> None:
    """Deliver only the next message (and leave what it leads to queued)."""
    from app.services.master import advance_run
    from app.services.worker import execute

    kind, body = h.stub.queue.popleft()
    if kind == "advance":
        advance_run(h.rt, int(body["run_id"]), actor="master")
    else:
        execute(h.rt, int(body["task_run_id"]), int(body["attempt"]))


def test_pool_set_adds_slots_and_starts_waiting_tasks_and_a_missing_pool_says_so(db_url):
    h = Harness(db_url)
    h.register("pooled", _pooled("a", "b"))
    run_id = h.tf.start_run("pooled")
    h.stub.drain(h.rt)
    tasks = h.tasks(h.tf.run(run_id))
    assert {n: tasks[n]["waiting_for"] for n in "ab"} == {
        n: "pool db does not exist (tideflow pool set db SLOTS)" for n in "ab"}
    h.tf.set_pool("db", 0)
    assert h.tasks(h.tf.run(run_id))["a"]["waiting_for"] == "pool db: 0/0 in use"
    h.stub.drain(h.rt)
    assert h.tf.run(run_id)["state"] == "running"
    h.tf.set_pool("db", 2)  # both fit now: re-published at once, no reconciler needed
    assert sorted(m["label"] for k, m in h.stub.queue if k == "execute") == ["pooled/a", "pooled/b"]
    h.stub.drain(h.rt)
    assert h.tf.run(run_id)["state"] == "succeeded"


def test_the_reconciler_republishes_a_waiting_task_when_the_release_message_was_lost(db_url):
    h = Harness(db_url, orphan_timeout_seconds=0.01)
    h.tf.set_pool("db", 1)
    h.register("pooled", _pooled("a", "b"))
    run_id = h.tf.start_run("pooled")
    h.stub.drain(h.rt, crash=lambda label, attempt: label.endswith("/a"))
    tasks = h.tasks(h.tf.run(run_id))
    with h.rt.db.transaction() as s:
        s.execute(update(TaskRun).where(TaskRun.id == tasks["a"]["id"]).values(lease_expires_at=utcnow()))
    reconcile_once(h.rt)
    h.stub.queue.clear()  # every message lost: the retry of a and the release of b
    # and their orphan re-publish is far off (a long back-off): the pool's backstop does not wait for it
    with h.rt.db.transaction() as s:
        s.execute(update(TaskRun).where(TaskRun.run_id == run_id)
                  .values(next_publish_at=utcnow() + timedelta(hours=1)))
    time.sleep(0.02)  # past orphan_timeout since the last publish
    assert reconcile_once(h.rt).republished == 1  # one free slot: one task
    assert h.tf.run(run_id)["state"] == "running"
    for _ in range(50):
        reconcile_once(h.rt)
        h.stub.drain(h.rt)
        if h.tf.run(run_id)["state"] == "succeeded":
            break
    assert h.tf.run(run_id)["state"] == "succeeded"
    assert max_overlap(pool_attempts(h.tf, "db")) == 1


def test_bad_pools_are_one_line_errors_and_store_nothing(db_url):
    import pytest

    from app.errors import DefinitionError, TideflowError

    h = Harness(db_url)
    with pytest.raises(TideflowError, match="pool name"):
        h.tf.set_pool("no spaces", 1)
    with pytest.raises(TideflowError, match="slots must be"):
        h.tf.set_pool("db", -1)
    assert h.tf.pools() == []
    with pytest.raises(DefinitionError, match="pool does not apply to a subworkflow"):
        h.register("parent", [{"name": "s", "type": "subworkflow", "workflow": "x", "pool": "db"}])


# -- max_active_runs ----------------------------------------------------------------------------------------


def _hold(h: Harness, run_id: int) -> int:
    """Deliver the run's messages with every attempt claimed and never finished (a worker that died): the run
    stays running until the test ends the attempt. Returns the held task's id."""
    h.stub.drain(h.rt, crash=lambda label, attempt: True)
    (task,) = h.tasks(h.tf.run(run_id)).values()
    return int(task["id"])


def _end(h: Harness, task_id: int) -> None:
    """The held attempt's lease lapses and the task is lost for good (on_lost: fail): its run fails."""
    with h.rt.db.transaction() as s:
        s.execute(update(TaskRun).where(TaskRun.id == task_id).values(lease_expires_at=utcnow(), on_lost="fail"))
    reconcile_once(h.rt)
    h.stub.drain(h.rt, crash=lambda label, attempt: True)  # the run's end; a run it started is held in turn


def test_max_active_runs_queues_extra_runs_and_starts_them_by_priority_then_first_come(db_url):
    h = Harness(db_url)
    h.register("etl", [{"name": "t", "type": "python", "function": ECHO}], max_active_runs=1)
    first = h.tf.start_run("etl")
    held = _hold(h, first)
    low1, low2 = h.tf.start_run("etl", priority=1), h.tf.start_run("etl", priority=1)
    high = h.tf.start_run("etl", priority=8)
    h.stub.drain(h.rt)
    runs = {r: h.tf.run(r) for r in (low1, low2, high)}
    assert {r: v["state"] for r, v in runs.items()} == dict.fromkeys(runs, "queued")
    assert runs[low1]["waiting_for"] == "max_active_runs of etl: 1/1 running"
    assert all(t["state"] == "pending" for v in runs.values() for t in v["tasks"])  # nothing of them ran
    assert h.tf.read(lambda s: repo.count_runs_in(s, "etl", "queued")) == 3
    from app.metrics import Metrics

    assert 'tideflow_runs{state="queued"} 3.0' in Metrics(h.rt).render()[0].decode()

    order: list[int] = []
    for current in (first, high, low1):  # each run's end, in its own transaction, starts the next queued one
        _end(h, held if current == first else int(h.tasks(h.tf.run(current))["t"]["id"]))
        assert h.tf.run(current)["state"] == "failed"
        started = [r for r in (low1, low2, high) if r not in order and h.tf.run(r)["state"] == "running"]
        assert len(started) == 1, {r: h.tf.run(r)["state"] for r in (low1, low2, high)}
        order += started
    assert order == [high, low1, low2]
    events = h.tf.read(lambda s: [dict(r._mapping) for r in repo.run_events(s, low1)])
    assert [(e["from_state"], e["to_state"]) for e in events][:2] == [(None, "queued"), ("queued", "running")]
    assert events[0]["reason"] == "started; queued: max_active_runs of etl: 1/1 running"
    second = h.tf.read(lambda s: repo.run_events(s, low2)[0].reason)
    assert second == "started; queued: max_active_runs of etl: 1/1 running, 1 queued already"


def test_a_queued_run_can_be_cancelled_and_the_reconciler_starts_queued_runs_when_there_is_room(db_url):
    h = Harness(db_url)
    h.register("etl", [{"name": "t", "type": "python", "function": ECHO}], max_active_runs=1)
    first = h.tf.start_run("etl")
    held = _hold(h, first)
    doomed, later = h.tf.start_run("etl"), h.tf.start_run("etl")
    h.tf.cancel(doomed, actor="ann")
    assert h.tf.run(doomed)["state"] == "cancelled"
    assert h.tf.run(later)["state"] == "queued"
    # the run holding the place ends without its promotion (as if that process died right after): the
    # reconciler starts the queued run
    with h.rt.db.transaction() as s:
        s.execute(update(repo.R).where(repo.R.c.id == first).values(state="failed"))
        s.execute(update(TaskRun).where(TaskRun.id == held).values(state="failed", lease_expires_at=None))
    assert h.tf.run(later)["state"] == "queued"
    reconcile_once(h.rt)
    h.stub.drain(h.rt)
    assert h.tf.run(later)["state"] == "succeeded"


def test_code_workflows_queue_by_max_active_runs_and_their_activities_take_pool_slots(db_url):
    from tests.integration.test_code_workflows import Code

    c = Code(db_url)
    c.tf.set_pool("codepool", 0)
    first, second = c.start("one_at_a_time", {"x": 1}), c.start("one_at_a_time", {"x": 2})
    assert (c.run(first)["state"], c.run(second)["state"]) == ("running", "queued")
    assert c.run(second)["waiting_for"] == "max_active_runs of one_at_a_time: 1/1 running"
    c.tf.signal(first, "go")
    c.stub.drain(c.rt)
    step = c.run(first)["steps"][-1]
    assert (step["kind"], step["state"], step["waiting_for"]) == ("activity", "submitted", "pool codepool: 0/0 in use")
    assert c.run(second)["state"] == "queued"
    c.tf.set_pool("codepool", 1)
    c.stub.drain(c.rt)
    assert (c.run(first)["state"], c.run(first)["result"]) == ("succeeded", 2)
    assert c.run(second)["state"] == "running"  # started by the first one's end
    c.rt.close()


# -- concurrency keys -------------------------------------------------------------------------------------


def test_a_task_concurrency_key_lets_one_task_per_key_run_and_other_keys_pass(db_url):
    h = Harness(db_url)
    h.register("per-customer", [{"name": "sync", "type": "python", "function": ECHO,
                                 "concurrency": {"key": "customer-{{ params.customer }}", "limit": 1}}],
               params={"customer": ""})
    a1 = h.tf.start_run("per-customer", {"customer": "a"})
    h.stub.drain(h.rt, crash=lambda label, attempt: True)  # a1's sync holds customer-a
    a2, b1 = h.tf.start_run("per-customer", {"customer": "a"}), h.tf.start_run("per-customer", {"customer": "b"})
    h.stub.drain(h.rt)
    assert h.tf.run(b1)["state"] == "succeeded"  # another key: not held back
    sync = h.tasks(h.tf.run(a2))["sync"]
    assert (sync["state"], sync["waiting_for"]) == ("submitted", "concurrency key customer-a: 1/1 running")
    held = h.tasks(h.tf.run(a1))["sync"]["id"]
    with h.rt.db.transaction() as s:
        s.execute(update(TaskRun).where(TaskRun.id == held).values(lease_expires_at=utcnow()))
    reconcile_once(h.rt)
    h.stub.drain(h.rt)
    assert h.tf.run(a1)["state"] == h.tf.run(a2)["state"] == "succeeded"
    with h.rt.db.read() as s:
        tasks = [t for r in (a1, a2) for t in repo.run_tasks(s, r)]
        rows = repo.attempts(s, [t.id for t in tasks])
    assert max_overlap([(a.started_at, a.finished_at) for a in rows]) == 1


def test_a_workflow_concurrency_key_queues_runs_of_the_same_key(db_url):
    h = Harness(db_url)
    h.register("per-customer", [{"name": "t", "type": "python", "function": ECHO}], params={"customer": ""},
               concurrency={"key": "{{ params.customer }}", "limit": 1})
    a1 = h.tf.start_run("per-customer", {"customer": "a"})
    held = _hold(h, a1)
    a2, b1 = h.tf.start_run("per-customer", {"customer": "a"}), h.tf.start_run("per-customer", {"customer": "b"})
    assert (h.tf.run(a2)["state"], h.tf.run(b1)["state"]) == ("queued", "running")
    assert h.tf.run(a2)["waiting_for"] == "concurrency key a: 1/1 running"
    _end(h, held)
    assert h.tf.run(a1)["state"] == "failed" and h.tf.run(a2)["state"] == "running"


def test_a_concurrency_key_may_name_only_declared_params(db_url):
    import pytest

    from app.errors import DefinitionError

    h = Harness(db_url)
    with pytest.raises(DefinitionError, match="parameter 'nope' is not declared"):
        h.register("bad", [{"name": "t", "type": "python", "function": ECHO,
                            "concurrency": {"key": "{{ params.nope }}", "limit": 1}}])
    with pytest.raises(DefinitionError, match="may name only the run's params"):
        h.register("bad", [{"name": "t", "type": "python", "function": ECHO}],
                   concurrency={"key": "{{ run.id }}", "limit": 1})



def test_an_activity_concurrency_key_holds_back_calls_with_the_same_rendered_key_dag_tasks_included(db_url):
    """``@tideflow.activity(concurrency={"key": "cust-{{ args.customer }}", "limit": 1})``: the key is rendered
    from the call's arguments and the step row carries it, so it is admitted exactly as a DAG task's key (the
    same claim, waiting_for, release and reconciler backstop), and a DAG task with the same rendered key shares
    the limit (keys are global)."""
    import tests.support.limitflows  # noqa: F401 - registers the workflows
    from tests.integration.test_code_workflows import Code

    c = Code(db_url)
    a1 = c.tf.start_run("customer_naps", {"customer": "a"})
    c.stub.drain(c.rt, crash=lambda label, attempt: True)  # a1's activity holds cust-a (its worker died)
    held = c.run(a1)["steps"][0]
    row = c.tf.read(lambda s: repo.get_task(s, held["task_run_id"]))
    assert (held["state"], row.concurrency_key, row.concurrency_limit) == ("running", "cust-a", 1)
    a2, b1 = c.tf.start_run("customer_naps", {"customer": "a"}), c.tf.start_run("customer_naps", {"customer": "b"})
    c.tf.register({"name": "dag-cust", "params": {"c": ""}, "tasks": [
        {"name": "t", "type": "python", "function": ECHO, "concurrency": {"key": "cust-{{ params.c }}", "limit": 1}}]})
    dag = c.tf.start_run("dag-cust", {"c": "a"})
    c.stub.drain(c.rt)
    assert c.run(b1)["state"] == "succeeded"  # another key: not held back
    step = c.run(a2)["steps"][0]
    assert (step["state"], step["waiting_for"]) == ("submitted", "concurrency key cust-a: 1/1 running")
    assert c.run(dag)["tasks"][0]["waiting_for"] == "concurrency key cust-a: 1/1 running"
    # the held attempt's lease lapses: the reconciler declares it lost (freeing the key) and the next waits' turn
    with c.rt.db.transaction() as s:
        s.execute(update(TaskRun).where(TaskRun.id == held["task_run_id"]).values(lease_expires_at=utcnow()))
    for _ in range(10):
        reconcile_once(c.rt)
        c.stub.drain(c.rt)
        if all(c.run(r)["state"] == "succeeded" for r in (a1, a2, dag)):
            break
    assert [c.run(r)["state"] for r in (a1, a2, dag)] == ["succeeded"] * 3
    with c.rt.db.read() as s:
        rows = repo.attempts(s, [t.id for r in (a1, a2, dag) for t in repo.run_tasks(s, r)])
    assert len(rows) == 4 and max_overlap([(a.started_at, a.finished_at) for a in rows]) == 1
    c.rt.close()


def test_an_activity_key_that_does_not_render_fails_that_activity_clearly(db_url):
    import tests.support.limitflows  # noqa: F401
    from tests.integration.test_code_workflows import Code

    c = Code(db_url)
    caught = c.start("unrenderable_key", {"catch": True})
    run = c.run(caught)
    assert run["state"] == "succeeded", run
    message = ("concurrency key '{{ args.order.customer }}' of activity 'order_nap' does not render: "
               "'args.order.customer' has no value")
    assert run["result"] == {"type": "TemplateError", "message": message, "then": "c1"}
    failed, then = run["steps"]
    assert (failed["state"], failed["error"], failed["attempts"]) == ("failed", f"TemplateError: {message}", [])
    assert then["state"] == "succeeded"
    uncaught = c.run(c.start("unrenderable_key", {"catch": False}))
    assert uncaught["state"] == "failed" and message in uncaught["error"], uncaught
    c.rt.close()


# -- rate limits ------------------------------------------------------------------------------------------


def _age_rate_log(h: Harness, seconds: float) -> None:
    """Move every recorded start ``seconds`` into the past (time passing, for the sliding window)."""
    from app.db.schema import RateStart

    with h.rt.db.transaction() as s:
        for row in s.query(RateStart).all():
            row.started_at = row.started_at - timedelta(seconds=seconds)


def test_a_task_rate_limit_holds_extra_starts_until_the_window_allows(db_url):
    h = Harness(db_url)
    h.register("rl", [{"name": "t", "type": "python", "function": ECHO, "rate_limit": "2/h"}])
    runs = [h.tf.start_run("rl") for _ in range(3)]
    done = h.stub.drain(h.rt)
    assert [h.tf.run(r)["state"] for r in runs] == ["succeeded", "succeeded", "running"]
    # the third is not dropped: its message comes back when the window lets one more start (a Celery countdown)
    assert [o for _, _, o in done.executed].count("too_early") == 1 and len(h.stub.delayed) == 1
    t = h.tasks(h.tf.run(runs[2]))["t"]
    assert (t["state"], t["waiting_for"]) == ("submitted", "rate limit task:rl.t: 2/h reached")
    _age_rate_log(h, 1800)  # half an hour later: still two starts in the last hour
    h.stub.release_delayed()
    h.stub.drain(h.rt)
    assert h.tf.run(runs[2])["state"] == "running"
    _age_rate_log(h, 1801)  # the first two left the window
    h.stub.release_delayed()
    h.stub.drain(h.rt)
    assert h.tf.run(runs[2])["state"] == "succeeded"


def test_a_pool_rate_limit_counts_every_task_of_the_pool(db_url):
    h = Harness(db_url)
    h.tf.set_pool("api", 10, rate_limit="1/h")
    assert h.tf.pools()[0]["rate_limit"] == "1/h"
    h.register("two", [{"name": n, "type": "python", "function": ECHO, "pool": "api"} for n in ("a", "b")])
    run_id = h.tf.start_run("two")
    h.stub.drain(h.rt)
    states = sorted(t["state"] for t in h.tf.run(run_id)["tasks"])
    assert states == ["submitted", "succeeded"]
    waiting = next(t for t in h.tf.run(run_id)["tasks"] if t["state"] == "submitted")
    assert waiting["waiting_for"] == "rate limit pool:api: 1/h reached"
    import pytest

    from app.errors import TideflowError

    with pytest.raises(TideflowError, match="rate limit '10/x' is not"):
        h.tf.set_pool("api", 10, rate_limit="10/x")


def test_a_pool_with_room_refuses_nobody_so_its_releases_publish_nothing(db_url):
    h = Harness(db_url)
    h.tf.set_pool("db", 5)
    h.register("pooled", _pooled("a", "b", "c"))
    run_id = h.tf.start_run("pooled")
    done = h.stub.drain(h.rt)
    assert h.tf.run(run_id)["state"] == "succeeded"
    assert sorted(o for _, _, o in done.executed) == ["succeeded"] * 3  # one message each, none duplicated


def test_pools_over_the_rest_api_need_admin_to_set_and_reject_bad_input(db_url):
    from app.services.tokens import add_token
    from tests.support.api import AUTH, make_client

    client, tf = make_client(db_url)
    try:
        with tf.runtime.db.transaction() as s:
            viewer = {"Authorization": f"Bearer {add_token(s, 'vera', 'viewer')}"}
            operator = {"Authorization": f"Bearer {add_token(s, 'otto', 'operator')}"}
        resp = client.put("/api/pools/db", json={"slots": 3}, headers=operator)
        assert resp.status_code == 403 and resp.json()["error"] == "forbidden"
        for path, body in (("/api/pools/db", {"slots": -1}), ("/api/pools/no%20space", {"slots": 1}),
                           ("/api/pools/db", {"slots": 1, "rate_limit": "fast"}), ("/api/pools/db", {})):
            bad = client.put(path, json=body, headers=AUTH)
            assert bad.status_code == 422 and bad.json()["error"], bad.text
        assert client.get("/api/pools", headers=viewer).json() == []  # nothing stored
        ok = client.put("/api/pools/db", json={"slots": 3, "rate_limit": "10/m"}, headers=AUTH)
        assert ok.status_code == 200
        assert ok.json() == {"name": "db", "slots": 3, "running": 0, "waiting": 0, "free": 3, "rate_limit": "10/m"}
        assert client.get("/api/pools", headers=viewer).json() == [ok.json()]
    finally:
        tf.close()
