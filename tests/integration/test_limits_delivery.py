"""Limits with real PostgreSQL, Redis and ``celery worker`` processes: a pool's slots are never exceeded (the
attempts ledger, sampled at every instant) while workers are killed and messages lost."""

from __future__ import annotations

import pytest

from app.db import repository as repo
from tests.support.harness import client_for, max_overlap, pool_attempts, wait_run
from tests.support.wait import wait_until


@pytest.fixture
def cluster_db_url(pg_url):
    return pg_url


@pytest.mark.slow
def test_pool_slots_are_never_exceeded_while_workers_die_and_messages_are_lost(cluster, broker):
    tf = client_for(cluster)
    tf.set_pool("db", 2)
    tf.register({"name": "pooled", "tasks": [
        {"name": f"t{i}", "type": "python", "function": "tests.support.jobs:sleep", "args": {"seconds": 1.5},
         "pool": "db"} for i in range(8)]})
    cluster.start_beat()
    workers = {n: cluster.start_worker(n, concurrency=2) for n in ("w1", "w2")}  # 4 processes for 2 slots
    run_id = tf.start_run("pooled")

    def two_running() -> dict | None:
        run = tf.run(run_id)
        running = [t for t in run["tasks"] if t["state"] == "running"]
        waiting = {t["waiting_for"] for t in run["tasks"] if t["state"] == "submitted"}
        return run if len(running) == 2 and waiting == {"pool db: 2/2 in use"} else None

    run = wait_until(two_running, timeout=60, message="two tasks should run and the rest wait for the pool")
    # kill a worker holding a slot: its attempt keeps the slot until the reconciler declares its lease lost
    pid = int(next(t["worker"] for t in run["tasks"] if t["state"] == "running").rsplit(":", 1)[1])
    victim = next(w for w in workers.values() if pid in w.children())
    victim.kill()
    broker.delete_queues()  # and every message in the broker is lost
    cluster.start_worker("w3", concurrency=2)

    run = wait_run(tf, run_id, "succeeded", timeout=180)
    outcomes = [a["outcome"] for t in run["tasks"] for a in t["attempts"]]
    assert outcomes.count("succeeded") == 8 and "lost" in outcomes
    assert max_overlap(pool_attempts(tf, "db")) == 2  # used both slots, never more
    with tf.runtime.db.read() as s:
        assert repo.pool_usage(s) == {}
    tf.close()


def _starts_in_any_window(starts: list, seconds: float) -> int:
    """The most of these start times within any half-open window of ``seconds``."""
    times = sorted(starts)
    most, lo = 0, 0
    for hi, t in enumerate(times):
        while (t - times[lo]).total_seconds() >= seconds:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


@pytest.mark.slow
def test_rate_limit_max_active_runs_and_concurrency_keys_hold_with_real_workers(cluster, broker):
    tf = client_for(cluster)
    tf.register({"name": "rated", "tasks": [
        {"name": "call", "type": "python", "function": "tests.support.jobs:record", "rate_limit": "3/s"}]})
    tf.register({"name": "serial", "params": {"customer": ""}, "max_active_runs": 2,
                 "concurrency": {"key": "{{ params.customer }}", "limit": 1}, "tasks": [
                     {"name": "work", "type": "python", "function": "tests.support.jobs:sleep",
                      "args": {"seconds": 0.5}}]})
    cluster.start_beat()
    cluster.start_worker("w1", concurrency=2)
    cluster.start_worker("w2", concurrency=2)
    rated = [tf.start_run("rated") for _ in range(10)]
    serial = [tf.start_run("serial", {"customer": c}, priority=p)
              for c, p in (("a", 5), ("a", 5), ("b", 5), ("c", 1), ("c", 9), ("a", 5))]
    wait_until(lambda: any(tf.run(r)["state"] == "queued" for r in serial), timeout=30)
    broker.delete_queues()  # every message lost on the way
    for r in rated + serial:
        wait_run(tf, r, "succeeded", timeout=120)

    with tf.runtime.db.read() as s:
        calls = [t.id for r in rated for t in repo.run_tasks(s, r)]
        starts = [a.started_at for a in repo.attempts(s, calls)]
        runs = {r: [e for e in repo.run_events(s, r) if e.task_run_id is None] for r in serial}
    assert len(starts) >= 10 and _starts_in_any_window(starts, 1.0) <= 3  # at most 3 starts in any second
    # each run's interval of holding a place: from its move to running until it finished
    spans = {r: (next(e.created_at for e in ev if e.to_state == "running"),
                 next(e.created_at for e in ev if e.to_state == "succeeded")) for r, ev in runs.items()}
    assert max_overlap(list(spans.values())) <= 2  # max_active_runs
    customers = ["a", "a", "b", "c", "c", "a"]
    for c in "abc":
        assert max_overlap([spans[r] for r, k in zip(serial, customers, strict=True) if k == c]) == 1
    assert any(ev[0].to_state == "queued" for ev in runs.values())
    tf.close()


def _kill_workers_running(workers: dict, tasks: list[dict]) -> list[str]:
    """SIGKILL every worker (of ``workers``, name -> Proc) whose pool process runs one of ``tasks`` (run view rows,
    ``worker`` = "host:pid"); returns their names (each is dropped from ``workers``)."""
    pids = {int(t["worker"].rsplit(":", 1)[1]) for t in tasks}
    victims = [n for n, w in workers.items() if pids & set(w.children())]
    assert victims, f"no live worker runs {sorted(pids)}"
    for name in victims:
        workers.pop(name).kill()
    return victims


@pytest.mark.slow
def test_task_concurrency_key_and_rate_limit_hold_while_workers_die_and_messages_are_lost(cluster, broker):
    """A worker holding a place of a task concurrency key and one holding a rate-limited start are SIGKILLed and
    every message is lost: the killed attempts keep their places until the reconciler declares their leases lost
    and retries them; the attempts ledger never shows more than 2 overlapping attempts of the key, nor more than
    2 starts of the rate-limited task in any second, and every task ends."""
    tf = client_for(cluster)
    tf.register({"name": "keyed", "tasks": [
        {"name": f"k{i}", "type": "python", "function": "tests.support.jobs:sleep", "args": {"seconds": 1.5},
         "concurrency": {"key": "api", "limit": 2}} for i in range(6)]})
    # a task's rate limit is per task (its scope: task:rated.call), shared by every run of the workflow
    tf.register({"name": "rated", "tasks": [
        {"name": "call", "type": "python", "function": "tests.support.jobs:sleep", "args": {"seconds": 1.0},
         "rate_limit": "2/s"}]})
    cluster.start_beat()
    workers = {n: cluster.start_worker(n, concurrency=3) for n in ("w1", "w2")}  # 6 processes: both limits bind
    run_id = tf.start_run("keyed")
    rated_runs = [tf.start_run("rated") for _ in range(8)]

    def both_running() -> list[dict] | None:
        keyed = [t for t in tf.run(run_id)["tasks"] if t["state"] == "running"]
        rated = [t for r in rated_runs for t in tf.run(r)["tasks"] if t["state"] == "running"]
        return [keyed[0], rated[0]] if keyed and rated else None

    holding = wait_until(both_running, timeout=60, message="a keyed and a rate-limited task should run")
    _kill_workers_running(workers, holding)
    broker.delete_queues()  # and every message in the broker is lost
    workers.update({n: cluster.start_worker(n, concurrency=3) for n in ("w3", "w4")})

    views = [wait_run(tf, r, "succeeded", timeout=120) for r in (run_id, *rated_runs)]
    outcomes = {t["id"]: [a["outcome"] for a in t["attempts"]] for v in views for t in v["tasks"]}
    assert all(o[-1] == "succeeded" for o in outcomes.values()), outcomes
    for killed in holding:  # the killed attempts were declared lost and retried
        assert "lost" in outcomes[killed["id"]], (killed, outcomes)
    with tf.runtime.db.read() as s:
        tasks = [t for r in (run_id, *rated_runs) for t in repo.run_tasks(s, r)]
        ledger = {t.id: [(a.started_at, a.finished_at) for a in repo.attempts(s, [t.id])] for t in tasks}
        keyed = [span for t in tasks if t.concurrency_key == "api" for span in ledger[t.id]]
        rated = [span[0] for t in tasks if t.rate_key == "task:rated.call" for span in ledger[t.id]]
        assert repo.key_usage(s) == {}
    assert len(keyed) > 6 and all(end is not None for _, end in keyed)
    assert max_overlap(keyed) == 2  # used both places of the key, never more (a lost attempt held its place)
    assert len(rated) > 8 and _starts_in_any_window(rated, 1.0) == 2  # at most 2 starts in any second
    tf.close()


@pytest.mark.slow
def test_max_active_runs_and_workflow_key_hold_while_workers_die_and_messages_are_lost(cluster, broker):
    """Workers holding the tasks of running runs under ``max_active_runs: 2`` and a workflow concurrency key are
    SIGKILLed and every message is lost: the runs stay running (their places held) until the reconciler retries
    the lost attempts; the runs' running intervals (run events) never overlap more than 2, nor more than 1 per
    key, and every run ends."""
    tf = client_for(cluster)
    tf.register({"name": "serial", "params": {"customer": ""}, "max_active_runs": 2,
                 "concurrency": {"key": "{{ params.customer }}", "limit": 1}, "tasks": [
                     {"name": "work", "type": "python", "function": "tests.support.jobs:sleep",
                      "args": {"seconds": 1.5}}]})
    cluster.start_beat()
    workers = {n: cluster.start_worker(n, concurrency=2) for n in ("w1", "w2")}
    customers = ["a", "a", "b", "c", "c", "a"]
    serial = [tf.start_run("serial", {"customer": c}) for c in customers]

    def two_running() -> list[dict] | None:
        views = [tf.run(r) for r in serial]
        tasks = [t for v in views if v["state"] == "running" for t in v["tasks"] if t["state"] == "running"]
        return tasks if len(tasks) == 2 else None

    holding = wait_until(two_running, timeout=60, message="two runs' tasks should run")
    _kill_workers_running(workers, holding)
    broker.delete_queues()  # and every message in the broker is lost
    workers.update({n: cluster.start_worker(n, concurrency=2) for n in ("w3", "w4")})

    for r in serial:
        wait_run(tf, r, "succeeded", timeout=120)
    with tf.runtime.db.read() as s:
        runs = {r: [e for e in repo.run_events(s, r) if e.task_run_id is None] for r in serial}
        outcomes = {r: [a.outcome for a in repo.attempts(s, [t.id for t in repo.run_tasks(s, r)])] for r in serial}
    # the killed attempts were declared lost and retried; their runs stayed running (holding their places)
    assert sum(o.count("lost") for o in outcomes.values()) >= len(holding), outcomes
    assert all(o[-1] == "succeeded" for o in outcomes.values()), outcomes
    spans = {r: (next(e.created_at for e in ev if e.to_state == "running"),
                 next(e.created_at for e in ev if e.to_state == "succeeded")) for r, ev in runs.items()}
    assert max_overlap(list(spans.values())) == 2  # max_active_runs: both places used, never more
    for c in "abc":
        assert max_overlap([spans[r] for r, k in zip(serial, customers, strict=True) if k == c]) == 1
    assert sum(ev[0].to_state == "queued" for ev in runs.values()) >= 3  # the limits did hold runs back
    tf.close()


def _ledger(tf, run_ids: list[int]) -> dict[str, list[tuple]]:
    """The attempts ledger of the runs' tasks and steps: ``[started_at, finished_at)`` of every attempt, by the
    limit the task was under (``pool:NAME``, ``key:KEY``, ``rate:SCOPE``); each attempt's outcome under
    ``outcomes``."""
    out: dict[str, list[tuple]] = {"outcomes": []}
    with tf.runtime.db.read() as s:
        tasks = {t.id: t for r in run_ids for t in repo.run_tasks(s, r)}
        for a in repo.attempts(s, list(tasks)):
            t = tasks[a.task_run_id]
            out["outcomes"].append((t.id, a.outcome))
            scopes = [f"pool:{t.pool}" if t.pool else None, f"key:{t.concurrency_key}" if t.concurrency_key else None,
                      f"rate:{t.rate_key}" if t.rate_key else None]
            for scope in filter(None, scopes):
                out.setdefault(scope, []).append((a.started_at, a.finished_at))
    return out


@pytest.mark.slow
def test_a_pool_rate_limit_holds_while_workers_holding_pool_work_die_and_messages_are_lost(cluster, broker):
    """``tideflow pool set api 10 --rate-limit 2/s``: the slots do not bind, the pool's rate does. Workers running
    pool work are SIGKILLed and every message is lost: never more than 2 starts of the pool's tasks in any second
    in the attempts ledger (the retries of the lost attempts included: each is a start), 2 reached, and every run
    ends."""
    tf = client_for(cluster)
    cluster.run_cli("pool", "set", "api", "10", "--rate-limit", "2/s", check=True)
    assert tf.pools()[0]["rate_limit"] == "2/s"
    for wf in ("first", "second"):  # two workflows (two task scopes): only the pool's rate is shared
        tf.register({"name": wf, "tasks": [
            {"name": f"t{i}", "type": "python", "function": "tests.support.jobs:sleep", "args": {"seconds": 1.0},
             "pool": "api"} for i in range(5)]})
    cluster.start_beat()
    workers = {n: cluster.start_worker(n, concurrency=3) for n in ("w1", "w2")}  # 6 processes: the rate binds
    runs = [tf.start_run("first"), tf.start_run("second")]

    def held_back() -> list[dict] | None:
        tasks = [t for r in runs for t in tf.run(r)["tasks"]]
        running = [t for t in tasks if t["state"] == "running"]
        waiting = {t["waiting_for"] for t in tasks if t["state"] == "submitted"}
        return running if running and "rate limit pool:api: 2/s reached" in waiting else None

    holding = wait_until(held_back, timeout=60, message="pool tasks should run and others wait for the pool's rate")
    killed = _kill_workers_running(workers, holding[:1])
    broker.delete_queues()  # and every message in the broker is lost
    workers.update({n: cluster.start_worker(n, concurrency=3) for n in ("w3", "w4")})

    views = [wait_run(tf, r, "succeeded", timeout=120) for r in runs]
    assert all(t["attempts"][-1]["outcome"] == "succeeded" for v in views for t in v["tasks"])
    ledger = _ledger(tf, runs)
    assert killed and any(o == "lost" for _, o in ledger["outcomes"]), ledger["outcomes"]
    starts = [start for start, _ in ledger["pool:api"]]
    assert len(starts) > 10  # every task, and the retries of the lost attempts
    assert _starts_in_any_window(starts, 1.0) == 2  # the pool's rate reached, never exceeded
    assert max_overlap(ledger["pool:api"]) > 1  # the slots (10) did not serialise them: the rate held them back
    tf.close()


@pytest.mark.slow
@pytest.mark.cluster_env(TIDEFLOW_WORKFLOW_MODULES="tests.support.limitflows")
def test_an_activity_concurrency_key_lets_one_per_key_run_and_other_keys_run_in_parallel(cluster, broker):
    """``@tideflow.activity(concurrency={"key": "cust-{{ args.customer }}", "limit": 1})`` with real workers: the
    activities of two runs for the same customer never overlap in the attempts ledger, the other customer's run
    beside them, and the held step says why it waits."""
    tf = client_for(cluster)
    cluster.start_beat()
    for n in ("w1", "w2"):
        cluster.start_worker(n, concurrency=3)
    runs = {c: [tf.start_run("customer_naps", {"customer": c, "n": 2, "seconds": 1.0}) for _ in range(2)]
            for c in ("a", "b")}
    waits = wait_until(lambda: {s["waiting_for"] for r in runs["a"] for s in tf.run(r)["steps"]
                                if s["state"] == "submitted"} & {"concurrency key cust-a: 1/1 running"},
                       timeout=60, message="a step of customer a should wait for its key")
    assert waits
    for r in runs["a"] + runs["b"]:
        assert wait_run(tf, r, "succeeded", timeout=120)["result"] == [0, 1]
    ledger = _ledger(tf, runs["a"] + runs["b"])
    assert len(ledger["key:cust-a"]) == len(ledger["key:cust-b"]) == 4
    assert max_overlap(ledger["key:cust-a"]) == 1 and max_overlap(ledger["key:cust-b"]) == 1
    assert max_overlap(ledger["key:cust-a"] + ledger["key:cust-b"]) == 2  # the two keys ran in parallel
    with tf.runtime.db.read() as s:
        assert repo.key_usage(s) == {}
    tf.close()


@pytest.mark.slow
@pytest.mark.cluster_env(TIDEFLOW_WORKFLOW_MODULES="tests.support.limitflows")
def test_code_activities_under_a_pool_a_key_and_a_rate_hold_while_workers_die_and_messages_are_lost(
    cluster, broker,
):
    """Code workflows' activities under a pool of 2 slots (``pool=``), an activity concurrency key of limit 2
    rendered from the run's params (``concurrency=``) and an activity rate limit of 2/s (``rate_limit=``):
    workers running one of each are SIGKILLed mid-activity and every message (execute and advance) is lost.
    The attempts ledger never shows more than 2 overlapping attempts of the pool or the key, nor more than 2
    starts of the rated activity in any second, each limit is reached, and every run ends succeeded."""
    from tests.support import limitflows

    tf = client_for(cluster)
    tf.set_pool(limitflows.POOL, 2)
    cluster.start_beat()
    workers = {n: cluster.start_worker(n, concurrency=4) for n in ("w1", "w2")}  # 8 processes: every limit binds
    # long enough that an activity seen running is still running when its worker is killed (a loaded machine)
    runs = {"pool": tf.start_run("limited_naps", {"kind": "pool", "n": 6, "seconds": 3.0}),
            "tenant": tf.start_run("limited_naps", {"kind": "tenant", "n": 6, "seconds": 3.0, "tenant": "t7"}),
            "rate": tf.start_run("limited_naps", {"kind": "rate", "n": 8, "seconds": 2.0})}

    def one_of_each_running() -> list[dict] | None:
        running = {k: [s for s in tf.run(r)["tasks"] if s["state"] == "running"] for k, r in runs.items()}
        return [steps[0] for steps in running.values()] if all(running.values()) else None

    holding = wait_until(one_of_each_running, timeout=60, message="an activity of each limit should run")
    _kill_workers_running(workers, holding)
    broker.delete_queues()  # and every message in the broker is lost
    workers.update({n: cluster.start_worker(n, concurrency=4) for n in ("w3", "w4")})

    views = {k: wait_run(tf, r, "succeeded", timeout=150) for k, r in runs.items()}
    assert views["pool"]["result"] == views["tenant"]["result"] == list(range(6))
    assert views["rate"]["result"] == list(range(8))
    ledger = _ledger(tf, list(runs.values()))
    pool, key = ledger[f"pool:{limitflows.POOL}"], ledger["key:tenant-t7"]
    rated = [start for start, _ in ledger["rate:activity:rated_nap"]]
    assert all(end is not None for _, end in pool + key)
    assert max_overlap(pool) == 2  # both slots used, never more (a lost attempt held its slot)
    assert max_overlap(key) == 2  # both places of the key used, never more
    assert _starts_in_any_window(rated, 1.0) == 2  # at most 2 starts in any second, and 2 reached
    outcomes: dict[int, list[str]] = {}
    for task_id, outcome in ledger["outcomes"]:
        outcomes.setdefault(task_id, []).append(outcome)
    for killed in holding:  # the killed attempts were declared lost and retried
        assert "lost" in outcomes[killed["id"]], (killed, outcomes)
    assert len(pool) > 6 and len(key) > 6 and len(rated) > 8  # every activity, and the lost attempts' retries
    with tf.runtime.db.read() as s:
        assert repo.key_usage(s) == {} and repo.pool_usage(s) == {}
    tf.close()
