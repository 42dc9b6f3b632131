"""A workflow with every task type, fan-out/fan-in and a sub-workflow, run by real Celery worker and beat
processes over real Redis, on PostgreSQL and on SQLite."""

from tests.support.harness import client_for, history, live_tasks, wait_run
from tests.support.jobs import read_ledger
from tests.support.wait import wait_until

CHILD = {
    "name": "child",
    "params": {"who": "nobody"},
    "tasks": [{"name": "greet", "type": "shell", "command": "echo hello {{ params.who }}"}],
}
PARENT = {
    "name": "parent",
    "params": {"day": "2026-01-01", "tricky": "a b; echo INJECTED"},
    "tasks": [
        {"name": "extract", "type": "shell", "command": "echo extracted {{ params.tricky }}"},
        {"name": "left", "type": "python", "function": "tests.support.jobs:record",
         "args": {"value": {"from": "{{ upstream.extract }}"}}, "depends_on": ["extract"]},
        {"name": "right", "type": "python", "function": "tests.support.jobs:record", "depends_on": ["extract"]},
        {"name": "join", "type": "python", "function": "tests.support.jobs:record",
         "args": {"value": "{{ upstream.left.from }}"}, "depends_on": ["left", "right"]},
        {"name": "report", "type": "subworkflow", "workflow": "child", "params": {"who": "{{ params.day }}"},
         "depends_on": ["join"]},
    ],
}


def test_workflow_runs_to_completion(cluster):
    cluster.start_worker("w1", concurrency=2)
    cluster.start_beat()
    tf = client_for(cluster)
    tf.register(CHILD)
    tf.register(PARENT)
    run_id = tf.start_run("parent", {"day": "2026-11-23"})

    run = wait_run(tf, run_id, "succeeded", timeout=60)
    tasks = {t["name"]: t for t in run["tasks"]}
    # shell parameters are quoted: the injected command is echoed, not run
    assert tasks["extract"]["result"] == "extracted a b; echo INJECTED"
    # upstream results flow downstream, keeping JSON types for whole-placeholder arguments
    assert tasks["left"]["result"] == {"from": "extracted a b; echo INJECTED"}
    assert tasks["join"]["result"] == "extracted a b; echo INJECTED"
    # the sub-workflow ran as a child run, with parameters from the parent, and reported back
    child_id = tasks["report"]["child_run_id"]
    child = tf.run(child_id)
    assert child["state"] == "succeeded" and child["parent_task_run_id"] == tasks["report"]["id"]
    assert child["tasks"][0]["result"] == "hello 2026-11-23"
    assert tasks["report"]["result"] == {"greet": "hello 2026-11-23"}
    # every python body ran exactly once
    execs = [e["task"] for e in read_ledger(cluster.ledger) if e["run"] == run_id]
    assert sorted(execs) == ["join", "left", "right"]
    # the history tells the story: each task went pending -> submitted -> running -> succeeded
    events = history(tf, run_id)
    for name in ("extract", "left", "right", "join"):
        assert [(e["from"], e["to"]) for e in events if e["task"] == name] == [
            ("pending", "submitted"), ("submitted", "running"), ("running", "succeeded")]
    assert events[-1]["to"] == "succeeded" and events[-1]["task"] is None
    assert all(t["attempts"][0]["duration"] is not None for t in run["tasks"] if t["type"] != "subworkflow")
    assert live_tasks(tf) == {}
    tf.close()


def test_tasks_run_only_on_workers_serving_their_queue(cluster):
    tf = client_for(cluster)
    tf.register({"name": "routed", "tasks": [
        {"name": "anywhere", "type": "python", "function": "tests.support.jobs:record"},
        {"name": "special", "type": "python", "function": "tests.support.jobs:record", "queue": "gpu",
         "depends_on": ["anywhere"]},
    ]})
    cluster.start_worker("w1", concurrency=1)  # master + default queues only
    run_id = tf.start_run("routed")
    wait_until(lambda: tf.run(run_id)["tasks"][1]["state"] == "submitted", timeout=30)
    assert tf.run(run_id)["tasks"][1]["queue"] == "gpu"
    gpu = cluster.start_worker("gpu", queues=("gpu",), concurrency=1)
    wait_run(tf, run_id, "succeeded", timeout=30)
    assert "[routed/special]" in gpu.log() and "[routed/special]" not in cluster.workers["w1"].log()
    tf.close()
