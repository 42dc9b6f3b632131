"""The ``tideflow`` command line as an operator uses it: a real subprocess against a real database (PostgreSQL
and SQLite), Redis and Celery worker. Read commands' ``--json`` output is parsed, errors are one line on stderr
starting with ``error:`` and exit 1."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import create_engine, inspect

from app.clock import utcnow
from app.db import repository as repo
from app.db.schema import Base
from tests.support.cli import stderr_line, tideflow, write_file
from tests.support.harness import client_for, wait_run
from tests.support.wait import wait_until

HELLO = """\
name: hello
params: {who: world}
tasks:
  - {name: greet, type: shell, command: "echo hello {{ params.who }}"}
  - {name: rec, type: python, function: "tests.support.jobs:record", args: {value: "{{ upstream.greet }}"},
     depends_on: [greet]}
"""

BROKEN = """\
name: broken
tasks:
  - {name: boom, type: shell, command: "echo going down; exit 3"}
  - {name: never, type: shell, command: "echo unreachable", depends_on: [boom]}
"""


def _json(cluster: Any, *args: str) -> Any:
    out = cluster.run_cli(*args, "--json", check=True)
    return json.loads(out.stdout)


def _cli_all(cluster: Any, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands, run side by side (each CLI start costs most of a second)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: cluster.run_cli(*args), commands))


def _json_all(cluster: Any, *commands: tuple[str, ...]) -> list[Any]:
    """Read commands run side by side with ``--json``; each must succeed; their parsed output."""
    results = _cli_all(cluster, *[(*args, "--json") for args in commands])
    for args, res in zip(commands, results, strict=True):
        assert res.returncode == 0, f"tideflow {' '.join(args)} exited {res.returncode}: {res.stderr}"
    return [json.loads(res.stdout) for res in results]


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``error:`` line of a failed command."""
    line = stderr_line(result)
    assert line.startswith("error: "), result.stderr
    return line


# -- db ---------------------------------------------------------------------------------------------------


def test_db_upgrade_is_idempotent(cluster, tmp_path):
    # on the test's (already migrated) database, with data in it
    cluster.run_cli("workflow", "register", write_file(tmp_path, "hello.yaml", HELLO), check=True)
    for _ in range(2):
        out = cluster.run_cli("db", "upgrade", check=True)
        assert "is up to date" in out.stdout
    assert [w["name"] for w in _json(cluster, "workflow", "list")] == ["hello"]

    # on an empty SQLite file: the first upgrade creates the schema, the second changes nothing
    fresh = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    env = {**cluster.env, "TIDEFLOW_DATABASE_URL": fresh}
    for _ in range(2):
        done = tideflow(env, "db", "upgrade", timeout=60)
        assert done.returncode == 0, done.stderr
    engine = create_engine(fresh)
    try:
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


# -- workflows --------------------------------------------------------------------------------------------


def test_register_versions_and_runs_keep_theirs(cluster, tmp_path):
    v1 = """\
    name: versioned
    tasks:
      - {name: greet, type: shell, command: "echo v1"}
    """
    v2 = """\
    name: versioned
    tasks:
      - {name: greet, type: shell, command: "echo v2"}
      - {name: extra, type: shell, command: "echo extra", depends_on: [greet]}
    """
    path = write_file(tmp_path, "versioned.yaml", v1)
    assert cluster.run_cli("workflow", "register", path, check=True).stdout.strip() == \
        "registered versioned version 1"
    assert cluster.run_cli("workflow", "register", path, check=True).stdout.strip() == \
        "versioned version 1 is unchanged"
    # started before the change (no worker yet, so it also executes after the change)
    old_run = _json(cluster, "run", "start", "versioned")["id"]

    write_file(tmp_path, "versioned.yaml", v2)
    assert cluster.run_cli("workflow", "register", path, check=True).stdout.strip() == \
        "registered versioned version 2"
    assert _json(cluster, "workflow", "register", path) == {"name": "versioned", "version": 2, "created": False,
                                                            "warnings": []}
    shown = _json(cluster, "workflow", "show", "versioned")
    assert shown["versions"] == [1, 2] and shown["version"] == 2
    assert [t["name"] for t in shown["definition"]["tasks"]] == ["greet", "extra"]
    first = _json(cluster, "workflow", "show", "versioned", "--version", "1")
    assert first["version"] == 1 and [t["command"] for t in first["definition"]["tasks"]] == ["echo v1"]
    assert [(w["name"], w["version"], w["tasks"]) for w in _json(cluster, "workflow", "list")] == [
        ("versioned", 2, 2)]
    new_run = _json(cluster, "run", "start", "versioned")["id"]

    cluster.start_worker("w1", concurrency=2)
    tf = client_for(cluster)
    for run_id in (old_run, new_run):
        wait_run(tf, run_id, "succeeded", timeout=60)
    tf.close()
    old = _json(cluster, "run", "show", str(old_run))
    new = _json(cluster, "run", "show", str(new_run))
    assert [(t["name"], t["result"]) for t in old["tasks"]] == [("greet", "v1")]
    assert [(t["name"], t["result"]) for t in new["tasks"]] == [("greet", "v2"), ("extra", "extra")]


def test_reregistering_an_earlier_definition_makes_it_current(cluster, tmp_path):
    path = write_file(tmp_path, "flipflop.yaml",
                      'name: flipflop\ntasks:\n  - {name: a, type: shell, command: "echo v1"}\n')
    cluster.run_cli("workflow", "register", path, check=True)
    write_file(tmp_path, "flipflop.yaml", 'name: flipflop\ntasks:\n  - {name: a, type: shell, command: "echo v2"}\n')
    cluster.run_cli("workflow", "register", path, check=True)
    write_file(tmp_path, "flipflop.yaml", 'name: flipflop\ntasks:\n  - {name: a, type: shell, command: "echo v1"}\n')
    cluster.run_cli("workflow", "register", path, check=True)
    # what `run start flipflop` will run is the file just registered
    current = _json(cluster, "workflow", "show", "flipflop")
    assert [t["command"] for t in current["definition"]["tasks"]] == ["echo v1"], current
    assert current["version"] == 3 and current["versions"] == [1, 2, 3]


BAD_DEFINITIONS = {
    "cycle": ("""\
        name: bad
        tasks:
          - {name: a, type: shell, command: "true", depends_on: [b]}
          - {name: b, type: shell, command: "true", depends_on: [a]}
        """, ["task 'a'", "cycle"]),
    "unknown-dependency": ("""\
        name: bad
        tasks:
          - {name: a, type: shell, command: "true"}
          - {name: b, type: shell, command: "true", depends_on: [ghost]}
        """, ["task 'b'", "unknown task 'ghost'"]),
    "duplicate-name": ("""\
        name: bad
        tasks:
          - {name: a, type: shell, command: "true"}
          - {name: a, type: shell, command: "false"}
        """, ["task 'a'", "duplicate"]),
    "bad-type": ("""\
        name: bad
        tasks:
          - {name: a, type: shell, command: "true", retries: "x"}
        """, ["task 'a'", "retries", "integer"]),
    "unknown-task-type": ("""\
        name: bad
        tasks:
          - {name: a, type: docker, command: "true"}
        """, ["task 'a'", "type", "shell"]),
    "yaml-syntax": ("""\
        name: bad
        tasks:
          - {name: a, type: shell, command: "true"
        """, ["not valid YAML at line", "expected ',' or '}'"]),
    "missing-file": (None, ["cannot read"]),
}


def test_bad_definitions_are_rejected_and_nothing_is_stored(cluster, tmp_path):
    paths = {case: str(tmp_path / f"{case}.yaml") if text is None else write_file(tmp_path, f"{case}.yaml", text)
             for case, (text, _) in BAD_DEFINITIONS.items()}
    results = _cli_all(cluster, *[("workflow", "register", path) for path in paths.values()])
    for (case, (_, expected)), result in zip(BAD_DEFINITIONS.items(), results, strict=True):
        line = _error_line(result)
        for fragment in expected:
            assert fragment in line, f"{case}: {fragment!r} not in {line!r}"
        if case in ("yaml-syntax", "missing-file"):
            assert paths[case] in line, line
    assert _json(cluster, "workflow", "list") == []


# -- runs -------------------------------------------------------------------------------------------------


def test_run_start_wait_and_read_commands(cluster, tmp_path):
    _json_all(cluster, ("workflow", "register", write_file(tmp_path, "hello.yaml", HELLO)),
              ("workflow", "register", write_file(tmp_path, "broken.yaml", BROKEN)))
    cluster.start_worker("w1", concurrency=2)

    ok, bad = _cli_all(cluster, ("run", "start", "hello", "-p", "who=tideflow", "--wait"),
                       ("run", "start", "broken", "--wait"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for word in ("greet", "rec", "succeeded"):
        assert word in ok.stdout, ok.stdout
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "boom" in bad.stdout and "failed" in bad.stdout

    hello_ok, broken_ok, failed, everything = _json_all(
        cluster, ("run", "list", "--state", "succeeded", "--workflow", "hello"),
        ("run", "list", "--state", "succeeded", "--workflow", "broken"), ("run", "list", "--state", "failed"),
        ("run", "list"))
    (hello_run,) = hello_ok
    assert hello_run["params"] == {"who": "tideflow"} and hello_run["state"] == "succeeded"
    assert broken_ok == []
    (failed_run,) = failed
    assert failed_run["workflow"] == "broken" and "boom" in failed_run["error"]
    assert sorted(r["workflow"] for r in everything) == ["broken", "hello"]

    shown, events, broken_shown = _json_all(cluster, ("run", "show", str(hello_run["id"])),
                                            ("run", "history", str(hello_run["id"])),
                                            ("run", "show", str(failed_run["id"])))
    assert shown["id"] == hello_run["id"] and shown["workflow"] == "hello" and shown["state"] == "succeeded"
    tasks = {t["name"]: t for t in shown["tasks"]}
    assert tasks["greet"]["result"] == "hello tideflow" and tasks["rec"]["result"] == "hello tideflow"
    assert [a["outcome"] for a in tasks["greet"]["attempts"]] == ["succeeded"]
    assert [(e["from"], e["to"]) for e in events if e["task"] == "greet"] == [
        ("pending", "submitted"), ("submitted", "running"), ("running", "succeeded")]
    assert events[0]["task"] is None and events[0]["to"] == "running"
    assert events[-1]["task"] is None and events[-1]["to"] == "succeeded"
    broken_tasks = {t["name"]: t for t in broken_shown["tasks"]}
    assert broken_tasks["boom"]["state"] == "failed" and broken_tasks["never"]["state"] == "skipped"

    boom_id = str(broken_tasks["boom"]["id"])
    greet_logs, boom_logs = _json_all(cluster, ("task", "logs", str(tasks["greet"]["id"])), ("task", "logs", boom_id))
    assert greet_logs["name"] == "greet" and greet_logs["run_id"] == hello_run["id"]
    assert "hello tideflow" in greet_logs["attempts"][0]["log"]
    assert "going down" in boom_logs["attempts"][0]["log"]
    assert "status 3" in boom_logs["attempts"][0]["error"]
    assert "going down" in cluster.run_cli("task", "logs", boom_id, check=True).stdout

    # --wait --json: stdout is only the final JSON (no live table in it)
    waited = cluster.run_cli("run", "start", "hello", "--wait", "--json")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert json.loads(waited.stdout)["state"] == "succeeded"


def test_errors_are_one_line(cluster, tmp_path):
    cluster.run_cli("workflow", "register", write_file(tmp_path, "hello.yaml", HELLO), check=True)
    expected = {
        ("run", "show", "999"): "error: run 999 does not exist",
        ("run", "history", "999", "--json"): "error: run 999 does not exist",
        ("run", "cancel", "999"): "error: run 999 does not exist",
        ("run", "retry", "999"): "error: run 999 does not exist",
        ("task", "logs", "999"): "error: task run 999 does not exist",
        ("run", "start", "nope"): "error: workflow 'nope' is not registered",
        ("run", "start", "hello", "-p", "who=x", "-p", "bogus=1"):
            "error: workflow 'hello': 'bogus' is not a parameter (declared: who)",
    }
    results = _cli_all(cluster, *expected)
    assert {cmd: _error_line(res) for cmd, res in zip(expected, results, strict=True)} == expected
    assert _json(cluster, "run", "list") == []
    # usage errors are one line too (exit 2, as Click does)
    usage = {
        ("run", "start", "hello", "-p", "novalue"): "error: Invalid value for -p: 'novalue' is not key=value",
        ("run", "list", "--state", "bogus"): "error: Invalid value for '--state': 'bogus' is not one of "
                                             "'running', 'succeeded', 'failed', 'cancelled', 'blocked', 'paused', "
                                             "'queued'.",
    }
    results = _cli_all(cluster, *usage)
    assert all(r.returncode == 2 and r.stderr.count("\n") == 1 for r in results), results
    assert [r.stderr.strip() for r in results] == list(usage.values())


def test_reconcile_prints_counts(cluster, tmp_path):
    cluster.run_cli("workflow", "register", write_file(tmp_path, "hello.yaml", HELLO), check=True)
    assert _json(cluster, "reconcile") == {"republished": 0, "lost_attempts": 0, "fired_timers": 0, "advanced_runs": 0}
    # no worker: the first task stays unclaimed, and a pass after the orphan timeout publishes it again
    run_id = _json(cluster, "run", "start", "hello")["id"]
    tf = client_for(cluster)
    with tf.runtime.db.read() as session:
        (task,) = [t for t in repo.run_tasks(session, run_id) if t.state == "submitted"]
    tf.close()
    wait_until(lambda: utcnow() > task.next_publish_at, timeout=30, message="the orphan timeout never passed")
    report = _json(cluster, "reconcile")
    assert report == {"republished": 1, "lost_attempts": 0, "fired_timers": 0, "advanced_runs": 0}
    history = _json(cluster, "run", "history", str(run_id))
    assert any(e["actor"] == "reconciler" and "re-published" in e["reason"] for e in history)
    assert "republished" in cluster.run_cli("reconcile", check=True).stdout

