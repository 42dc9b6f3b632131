"""``tideflow pool set|list`` and what ``run show`` says about limits, through the real CLI (no worker runs: the
tasks stay where the limits hold them)."""

from __future__ import annotations

import json

from tests.support.harness import client_for


def test_pool_commands_and_run_show_say_what_holds_a_run_back(cluster, tmp_path):
    bad = cluster.run_cli("pool", "set", "db", "-1")
    assert bad.returncode != 0 and "-1" in bad.stderr
    bad = cluster.run_cli("pool", "set", "db", "2", "--rate-limit", "often")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: rate limit 'often'")
    assert json.loads(cluster.run_cli("pool", "list", "--json", check=True).stdout) == []  # nothing stored
    shown = cluster.run_cli("pool", "set", "db", "0", check=True).stdout
    assert "db" in shown and "0" in shown
    assert json.loads(cluster.run_cli("pool", "list", "--json", check=True).stdout) == [
        {"name": "db", "slots": 0, "running": 0, "waiting": 0, "free": 0, "rate_limit": None}]

    path = tmp_path / "limited.yaml"
    path.write_text("name: limited\nmax_active_runs: 1\ntasks:\n"
                    "  - {name: load, type: python, function: 'tests.support.jobs:record', pool: db}\n")
    cluster.run_cli("workflow", "register", str(path), check=True)
    tf = client_for(cluster)
    try:
        first, second = tf.start_run("limited"), tf.start_run("limited")
        # the claim a worker would make: refused, the task stays submitted
        from app.clock import utcnow
        from app.services import attempts

        with tf.runtime.db.transaction() as s:
            task = next(t for t in tf.run(first)["tasks"])
            assert attempts.claim(s, tf.runtime, task["id"], 1, now=utcnow(), token="t") is None
    finally:
        tf.close()
    out = cluster.run_cli("run", "show", str(first), check=True).stdout
    assert "load: waiting for pool db: 0/0 in use" in out
    out = cluster.run_cli("run", "show", str(second), check=True).stdout
    assert "queued: waiting for max_active_runs of limited: 1/1 running" in out
    assert json.loads(cluster.run_cli("pool", "list", "--json", check=True).stdout)[0]["waiting"] == 1
