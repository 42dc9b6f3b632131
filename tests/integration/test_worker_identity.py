"""The history names the Celery worker that ran each task: its node name (``-n wa@%h``), this start's boot id and
the pool process's pid (``app.runtime.worker_identity``), so workers in containers that share a hostname and a pid
are told apart (README, "Deploying")."""

from __future__ import annotations

import re
import socket

from tests.support.harness import client_for, history, wait_run

WORKFLOW = {
    "name": "identity",
    "tasks": [{"name": f"t{i}", "type": "python", "function": "tests.support.jobs:record"} for i in range(4)],
}


def test_history_names_the_worker_node_boot_and_pid(cluster):
    workers = {"wa": cluster.start_worker("wa", concurrency=1), "wb": cluster.start_worker("wb", concurrency=1)}
    tf = client_for(cluster)
    tf.register(WORKFLOW)
    run = wait_run(tf, tf.start_run("identity"), timeout=60)
    host = re.escape(socket.gethostname())
    pattern = re.compile(rf"(w[ab])@{host}:([0-9a-f]{{6}}):(\d+)")
    seen = set()
    for task in run["tasks"]:
        match = pattern.fullmatch(task["worker"])
        assert match, task["worker"]
        name, _boot, pid = match.groups()
        assert int(pid) in workers[name].children(), (task["worker"], workers[name].children())
        seen.add(task["worker"])
    # the events say the same: whoever moved a task to running is that task's worker
    running = {e["actor"] for e in history(tf, run["id"]) if e["task"] and e["to"] == "running"}
    assert running == seen
    # each worker start has a boot id of its own
    boots = {m.group(1): m.group(2) for w in seen if (m := pattern.fullmatch(w))}
    assert len(set(boots.values())) == len(boots)
