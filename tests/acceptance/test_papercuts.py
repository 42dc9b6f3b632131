"""What a newcomer stumbles on (issue 11, "Papercuts"), as an operator meets it: a real ``tideflow`` subprocess,
real PostgreSQL, Redis and Celery workers.

* a database nobody ran ``tideflow db upgrade`` on: the CLI, the API (503) and a worker's log say "run `tideflow db
  upgrade`", not a raw SQL error; ``db upgrade`` then says what it created;
* ``run start`` with the broker down: one line, exit 0, the run is stored and dispatched once the broker is back;
  ``--wait`` with no worker says so;
* ``--wait`` counts succeeded, failed and skipped tasks apart; ``run show`` gives task ids and whole errors;
  ``task logs RUN TASK``;
* ``.env`` is git-ignored and the README says how to get ``tideflow`` on the PATH.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from typing import Any

import pytest
from sqlalchemy import create_engine

from app.db.migrate import head, schema_problem, upgrade, upgrade_reported
from app.services import views
from tests.support.api import AUTH, make_client
from tests.support.cli import REPO_ROOT, stderr_line, tideflow, write_file
from tests.support.cluster import Cluster
from tests.support.harness import client_for, wait_run
from tests.support.servers import create_database, drop_database

ADVICE = "run `tideflow db upgrade`"

HELLO = """\
name: hello
tasks:
  - {name: greet, type: shell, command: "echo hello"}
"""

#: two tasks succeed, then one fails with an error longer than a table cell used to show (60 characters) and its
#: downstream task is skipped (a failure stops the run: boom waits for both, so the counts do not depend on timing)
MIXED = """\
name: mixed
tasks:
  - {name: ok, type: shell, command: "echo fine"}
  - {name: ok2, type: shell, command: "echo fine too"}
  - {name: boom, type: python, function: "tests.support.jobs:fail_unless_exists",
     args: {marker: "/nonexistent/%s/END-OF-THE-ERROR"}, depends_on: [ok, ok2]}
  - {name: never, type: shell, command: "echo unreachable", depends_on: [boom]}
""" % ("a-long-directory-name-" * 4)


# -- a database without `db upgrade` ---------------------------------------------------------------------


def test_unmigrated_database_says_run_db_upgrade(postgres, broker, tmp_path):
    name = f"tf_empty_{uuid.uuid4().hex[:8]}"
    url = create_database(postgres.maintenance_url, name)  # no schema: nobody ran `tideflow db upgrade`
    cluster = Cluster(url, broker.url, broker.key_prefix, tmp_path / "cluster")
    try:
        # the CLI: one line naming the fix, for a read and for a write
        for args in (("run", "list"), ("workflow", "register", write_file(tmp_path, "hello.yaml", HELLO))):
            line = stderr_line(cluster.run_cli(*args))
            assert line.startswith("error: the database at "), line
            assert line.endswith(f"has no Tideflow schema: {ADVICE}"), line

        # the API: a 503 saying the same
        client, tf = make_client(url)
        try:
            res = client.get("/api/runs", headers=AUTH)
            assert res.status_code == 503, res.text
            assert res.json()["error"] == "unavailable" and res.json()["message"].endswith(ADVICE), res.json()
        finally:
            tf.close()

        # a worker: a clear log line at start
        worker = cluster.start_worker("w1", concurrency=1)
        worker.wait_for_log(f"has no Tideflow schema: {ADVICE}", timeout=30)

        # `db upgrade` on the empty database says what it created, then that there is nothing to do
        created = cluster.run_cli("db", "upgrade", check=True).stdout
        assert f"was empty: created the schema (revision (none) -> {head()}" in created, created
        assert "workflow_runs" in created and "task_runs" in created, created
        again = cluster.run_cli("db", "upgrade", check=True).stdout
        assert f"is up to date (revision {head()})" in again, again
        assert json.loads(cluster.run_cli("run", "list", "--json", check=True).stdout) == []
    finally:
        cluster.stop()
        drop_database(postgres.maintenance_url, name)


def test_unmigrated_sqlite_file_says_run_db_upgrade(tmp_path):
    env = {**Cluster("sqlite://", "redis://127.0.0.1:1/0", "", tmp_path / "c").env,
           "TIDEFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'new.sqlite3'}"}
    done = tideflow(env, "run", "show", "1", timeout=60)
    assert stderr_line(done).endswith(f"has no Tideflow schema: {ADVICE}"), done.stderr


def test_a_schema_behind_the_code_names_both_revisions(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    upgrade(url, "0004")  # as an older Tideflow left it
    engine = create_engine(url)
    try:
        problem = schema_problem(engine)
    finally:
        engine.dispose()
    assert problem is not None and problem.endswith(
        f"is at schema revision 0004, this Tideflow needs {head()}: {ADVICE}"), problem
    report = upgrade_reported(url)
    assert str(report) == f"upgraded (revision 0004 -> {head()})" or str(report).startswith(
        f"upgraded (revision 0004 -> {head()}; new tables: "), report


# -- the broker down, no worker ----------------------------------------------------------------------------


@pytest.fixture
def cluster_db_url(pg_url: str) -> str:
    return pg_url


@pytest.mark.cluster_env(TIDEFLOW_WAIT_UNCLAIMED_WARNING_SECONDS="1")
def test_broker_down_and_no_worker(cluster, tmp_path):
    cluster.run_cli("workflow", "register", write_file(tmp_path, "hello.yaml", HELLO), check=True)

    # the broker is down: one line, exit 0, and the run is stored with its task waiting to be published
    down = {**cluster.env, "TIDEFLOW_BROKER_URL": "redis://127.0.0.1:1/0"}
    started = tideflow(down, "run", "start", "hello")
    assert started.returncode == 0 and started.stderr == "", (started.stdout, started.stderr)
    (line,) = started.stdout.splitlines()
    match = re.fullmatch(r"started run (\d+); the broker is unreachable \(.+\): the run is stored and its tasks "
                         r"are dispatched when the broker is back \(the reconciler publishes them again\)", line)
    assert match, line
    stored = int(match.group(1))
    tf = client_for(cluster)
    assert tf.run(stored)["tasks"][0]["state"] == "submitted"

    # --wait with the broker up but no worker: says so after a while (1 s here), then times out
    waited = cluster.run_cli("run", "start", "hello", "--wait", "--timeout", "4")
    assert waited.returncode == 1, waited.stdout + waited.stderr
    assert re.search(r"no worker has claimed a task of run \d+ for \d+ s: is a worker running on queue "
                     r"tideflow\.default\?", waited.stderr), waited.stderr
    assert waited.stderr.count("no worker has claimed") == 1, waited.stderr

    # once there is a worker (and beat's reconciler), both runs are dispatched and succeed
    cluster.start_worker("w1", concurrency=1)
    cluster.start_beat()
    runs = tf.read(views.list_runs)
    assert stored in {r["id"] for r in runs} and len(runs) == 2
    for run in runs:
        wait_run(tf, run["id"], "succeeded", timeout=60)
    tf.close()


# -- the --wait bar, run show, task logs -------------------------------------------------------------------


def test_progress_counts_task_ids_whole_errors_and_task_logs(cluster, tmp_path):
    cluster.run_cli("workflow", "register", write_file(tmp_path, "mixed.yaml", MIXED), check=True)
    cluster.start_worker("w1", concurrency=2)
    wide = {**cluster.env, "COLUMNS": "300"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return tideflow(wide, *args)

    waited = cli("run", "start", "mixed", "--wait")
    assert waited.returncode == 1, waited.stdout + waited.stderr
    # the bar's line counts each outcome apart ("4/4 tasks failed" was wrong: one failed)
    assert "4/4 tasks done: 2 succeeded, 1 failed, 1 skipped" in waited.stdout, waited.stdout
    run_id = int(re.search(r"started run (\d+)", waited.stdout).group(1))  # type: ignore[union-attr]

    view: dict[str, Any] = json.loads(cli("run", "show", str(run_id), "--json").stdout)
    tasks = {t["name"]: t for t in view["tasks"]}
    error = tasks["boom"]["error"]
    assert len(error) > 100 and error.endswith("END-OF-THE-ERROR does not exist"), error

    # run show: each task's id, and the error whole (it was cut at 60 characters)
    shown = cli("run", "show", str(run_id))
    assert shown.returncode == 0, shown.stderr
    rows = {line.split("│")[2].strip(): line for line in shown.stdout.splitlines() if line.count("│") > 3}
    for name, task in tasks.items():
        assert rows[name].split("│")[1].strip() == str(task["id"]), (name, rows)
    assert error in shown.stdout, shown.stdout
    assert view["error"] and f"error: {view['error']}" in shown.stdout, shown.stdout  # the run's own error too
    assert error in waited.stdout, waited.stdout

    # task logs RUN TASK: by name or by task run id; the old TASK_RUN_ID form still works
    by_name, by_id, alone = (cli("task", "logs", str(run_id), "boom"), cli("task", "logs", str(run_id),
                             str(tasks["boom"]["id"])), cli("task", "logs", str(tasks["boom"]["id"])))
    for res in (by_name, by_id, alone):
        assert res.returncode == 0, res.stderr
        assert "boom attempt 1" in res.stdout and f"error: {error}" in res.stdout, res.stdout
    ok_logs = json.loads(cli("task", "logs", str(run_id), "ok", "--json").stdout)
    assert ok_logs["name"] == "ok" and "fine" in ok_logs["attempts"][0]["log"]
    assert stderr_line(cli("task", "logs", str(run_id), "nope")) == f"error: run {run_id} has no task 'nope'"
    assert stderr_line(cli("task", "logs", "99999", "boom")) == "error: run 99999 does not exist"
    other = cli("task", "logs", str(run_id + 1000), str(tasks["boom"]["id"]))
    assert stderr_line(other) == f"error: run {run_id + 1000} does not exist"


# -- the repository ----------------------------------------------------------------------------------------


def test_env_file_is_git_ignored_and_readme_says_how_to_get_tideflow_on_the_path():
    if (REPO_ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT, check=False)
        assert ignored.returncode == 0, ".env is not git-ignored"
    assert ".env" in (REPO_ROOT / ".gitignore").read_text().splitlines()
    readme = (REPO_ROOT / "README.md").read_text()
    assert ". .venv/bin/activate" in readme and "python3 -m pip install -e ." in readme
