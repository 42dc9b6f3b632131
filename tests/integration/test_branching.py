"""Branching end to end: trigger rules, ``when:`` conditions and ``switch`` tasks.

In process first (the stub broker, ``app.testing.StubDispatcher``: PostgreSQL and SQLite, both advance paths, in
milliseconds): examples/branching.yaml under each branch, a failure handled by ``one_failed``/``all_done``, a
condition that cannot be evaluated, ``run retry`` and registration errors. Then with real ``celery worker``
processes over Redis: the example DAG run by a worker, each skipped task saying why in the history."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.client import Tideflow
from app.config import load_settings
from app.db import repository as repo
from app.errors import DefinitionError
from app.runtime import Runtime
from app.states import TASK_LIVE
from app.testing import StubDispatcher
from tests.support.harness import client_for, history, wait_run
from tests.support.jobs import read_ledger

EXAMPLE = yaml.safe_load((Path(__file__).parents[2] / "examples" / "branching.yaml").read_text())
ECHO = "tests.support.jobs_unit:echo"
BOOM = "tests.support.jobs_unit:boom"
RECORD = "tests.support.jobs:record"


class InProcess:
    """A runtime on the stub broker (app/testing.py's documented use)."""

    def __init__(self, db_url: str, inline: bool):
        self.stub = StubDispatcher()
        self.rt = Runtime.create(load_settings(database_url=db_url, inline_advance=inline), self.stub)
        self.tf = Tideflow(self.rt)

    def run(self, workflow: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        run_id = self.tf.start_run(workflow, params)
        self.stub.drain(self.rt)
        run = self.tf.run(run_id)
        with self.rt.db.read() as s:  # settled: nothing live, nothing left unhandled
            tasks = repo.run_tasks(s, run_id)
        assert run["state"] != "running" and not [t.name for t in tasks if t.state in TASK_LIVE or not t.handled]
        return run

    def skips(self, run: dict[str, Any]) -> dict[str, str]:
        return {t["name"]: t["skip_reason"] for t in run["tasks"] if t["state"] == "skipped"}


@pytest.fixture(params=[True, False], ids=["inline", "master"])
def ip(request: pytest.FixtureRequest, db_url: str) -> Iterator[InProcess]:
    h = InProcess(db_url, request.param)
    try:
        yield h
    finally:
        h.rt.close()


def states(run: dict[str, Any]) -> dict[str, str]:
    return {t["name"]: t["state"] for t in run["tasks"]}


def test_the_switch_runs_the_chosen_branch_and_the_join_runs_after_it(ip: InProcess) -> None:
    ip.tf.register(EXAMPLE)
    run = ip.run("branching", {"region": "us"})
    assert run["state"] == "succeeded", run["error"]
    assert states(run) == {
        "extract": "succeeded", "route": "succeeded", "load_eu": "skipped", "load_us": "succeeded",
        "load_other": "skipped", "report": "succeeded", "notify": "skipped", "archive": "skipped",
        "alert": "skipped", "cleanup": "succeeded"}
    assert ip.skips(run) == {
        "load_eu": "switch 'route' chose 'load_us'", "load_other": "switch 'route' chose 'load_us'",
        "notify": "when: params.notify was false", "archive": "when: upstream.extract | int > 100 was false",
        "alert": "trigger rule one_failed: no upstream task failed"}
    tasks = {t["name"]: t for t in run["tasks"]}
    assert tasks["route"]["result"] == {"next": ["load_us"], "case": 1}
    assert tasks["load_us"]["result"] == "loading 10 rows into us"
    assert tasks["report"]["trigger_rule"] == "none_failed" and tasks["notify"]["when"] == "params.notify"
    assert all(tasks[n]["error"] is None for n in ip.skips(run))  # skipped on purpose: no error
    events = [(e["task"], e["from"], e["to"], e["reason"]) for e in history(ip.tf, run["id"])]
    assert ("route", "running", "succeeded", "switch 'route' chose 'load_us' (case 2 holds: params.region == 'us')") \
        in events
    assert run["error"] is None


def test_the_default_branch_and_conditions_that_hold(ip: InProcess) -> None:
    ip.tf.register(EXAMPLE)
    run = ip.run("branching", {"region": "mars", "rows": 500, "notify": True})
    assert run["state"] == "succeeded", run["error"]
    assert {n for n, st in states(run).items() if st == "skipped"} == {"load_eu", "load_us", "alert"}
    assert ip.skips(run)["load_eu"] == "switch 'route' chose 'load_other'"
    assert states(run)["notify"] == states(run)["archive"] == "succeeded"


def test_a_failure_handled_by_trigger_rules_runs_the_handlers_and_fails_the_run_by_its_leaves(ip: InProcess) -> None:
    ip.tf.register(EXAMPLE)
    run = ip.run("branching", {"region": "eu", "fail_load": True, "notify": True})
    # on_failure is stop, but alert (one_failed) and cleanup (all_done) handle the failure: the run goes on
    assert states(run) == {
        "extract": "succeeded", "route": "succeeded", "load_eu": "failed", "load_us": "skipped",
        "load_other": "skipped", "report": "skipped", "notify": "skipped", "archive": "skipped",
        "alert": "succeeded", "cleanup": "succeeded"}
    skips = ip.skips(run)
    assert skips["report"] == "trigger rule none_failed: upstream 'load_eu' failed"
    assert skips["notify"] == "trigger rule all_success: upstream 'report' was skipped after a failure"
    # a leaf (notify) was skipped because of the failure: the run failed, naming the failed task and its error
    assert run["state"] == "failed"
    assert run["error"].startswith("task 'load_eu' did not succeed: command exited with status 3"), run["error"]


def test_a_handled_failure_with_successful_leaves_succeeds_the_run(ip: InProcess) -> None:
    ip.tf.register({"name": "guarded", "tasks": [
        {"name": "risky", "type": "python", "function": BOOM},
        {"name": "fallback", "type": "python", "function": ECHO, "depends_on": ["risky"], "trigger_rule": "all_failed"},
    ]})
    run = ip.run("guarded")
    assert states(run) == {"risky": "failed", "fallback": "succeeded"}
    assert run["state"] == "succeeded"
    last = history(ip.tf, run["id"])[-1]
    assert (last["task"], last["to"]) == (None, "succeeded")
    assert last["reason"] == "no leaf task failed (1 succeeded, 1 failed)"


def test_one_success_fires_without_waiting_for_the_other_upstream_tasks(ip: InProcess) -> None:
    ip.tf.register({"name": "race", "params": {"gate": ""}, "tasks": [
        {"name": "fast", "type": "python", "function": ECHO},
        {"name": "slow", "type": "shell", "command": "sleep 30", "timeout": 60},
        {"name": "first", "type": "python", "function": ECHO, "depends_on": ["fast", "slow"],
         "trigger_rule": "one_success"},
    ]})
    run_id = ip.tf.start_run("race")
    ip.stub.drain(ip.rt, crash=lambda label, attempt: label.endswith("/slow"))  # slow stays running
    run = ip.tf.run(run_id)
    assert states(run) == {"fast": "succeeded", "slow": "running", "first": "succeeded"}
    ip.tf.cancel(run_id)


def test_a_condition_that_cannot_be_evaluated_fails_its_task_saying_why(ip: InProcess) -> None:
    ip.tf.register({"name": "strict", "tasks": [
        {"name": "a", "type": "python", "function": ECHO, "args": {"value": {"rows": 1}}},
        {"name": "b", "type": "python", "function": ECHO, "depends_on": ["a"], "when": "upstream.a.size > 0"},
        {"name": "c", "type": "python", "function": ECHO, "depends_on": ["b"]},
    ]})
    run = ip.run("strict")
    tasks = {t["name"]: t for t in run["tasks"]}
    assert tasks["b"]["state"] == "failed"
    assert tasks["b"]["error"] == "when: upstream.a.size > 0: UndefinedError: 'dict object' has no attribute 'size'"
    assert tasks["c"]["state"] == "skipped" and run["state"] == "failed"


def test_run_retry_decides_the_branches_again(ip: InProcess, tmp_path: Path) -> None:
    marker = tmp_path / "fixed"
    ip.tf.register({"name": "again", "params": {"marker": str(marker)}, "tasks": [
        {"name": "check", "type": "shell", "command": "test -e {{ params.marker }} && echo ok"},
        {"name": "route", "type": "switch", "depends_on": ["check"], "default": "b",
         "cases": [{"when": "upstream.check == 'ok'", "next": "a"}]},
        {"name": "a", "type": "python", "function": ECHO, "depends_on": ["route"]},
        {"name": "b", "type": "python", "function": ECHO, "depends_on": ["route"]},
    ]})
    run = ip.run("again")
    assert run["state"] == "failed" and states(run)["route"] == "skipped"
    marker.touch()
    ip.tf.retry(run["id"])
    ip.stub.drain(ip.rt)
    run = ip.tf.run(run["id"])
    assert run["state"] == "succeeded" and states(run) == {
        "check": "succeeded", "route": "succeeded", "a": "succeeded", "b": "skipped"}


def test_registration_refuses_bad_branching_and_stores_nothing(ip: InProcess) -> None:
    bad = {**EXAMPLE, "name": "bad", "tasks": [*EXAMPLE["tasks"][:-1],
                                               {**EXAMPLE["tasks"][-1], "when": "params.colour == 'red'"}]}
    with pytest.raises(DefinitionError, match="task 'cleanup': when: parameter 'colour' is not declared"):
        ip.tf.register(bad)
    with ip.rt.db.read() as s:
        assert repo.workflow(s, "bad") is None


# -- with real worker processes ---------------------------------------------------------------------------------


def test_a_worker_runs_the_branching_example_end_to_end(cluster):
    cluster.start_worker("w1", concurrency=2)
    tf = client_for(cluster)
    tf.register(EXAMPLE)
    ok = tf.start_run("branching", {"region": "us"})
    failing = tf.start_run("branching", {"region": "eu", "fail_load": True})
    run = wait_run(tf, ok, "succeeded", timeout=60)
    assert {t["name"] for t in run["tasks"] if t["state"] == "succeeded"} == {
        "extract", "route", "load_us", "report", "cleanup"}
    why = {(e["task"], e["reason"]) for e in history(tf, ok) if e["to"] == "skipped"}
    assert why == {("load_eu", "switch 'route' chose 'load_us'"), ("load_other", "switch 'route' chose 'load_us'"),
                   ("notify", "when: params.notify was false"),
                   ("archive", "when: upstream.extract | int > 100 was false"),
                   ("alert", "trigger rule one_failed: no upstream task failed")}
    # the switch never reached a worker: the master decided it
    route = next(t for t in run["tasks"] if t["name"] == "route")
    assert route["attempts"] == [] and route["worker"] is None

    run = wait_run(tf, failing, "failed", timeout=60)
    got = {t["name"]: t["state"] for t in run["tasks"]}
    assert got["load_eu"] == "failed" and got["alert"] == got["cleanup"] == "succeeded"
    assert got["report"] == got["notify"] == "skipped"
    assert ("report", "trigger rule none_failed: upstream 'load_eu' failed") in {
        (e["task"], e["reason"]) for e in history(tf, failing) if e["to"] == "skipped"}

    # the other rules: one_success and all_failed run after a failure, all_failed skips after a success
    tf.register({"name": "rules", "tasks": [
        {"name": "ok", "type": "python", "function": RECORD},
        {"name": "bad", "type": "python", "function": "tests.support.jobs:fail_times", "args": {"times": 9}},
        {"name": "any", "type": "python", "function": RECORD, "depends_on": ["ok", "bad"],
         "trigger_rule": "one_success"},
        {"name": "fallback", "type": "python", "function": RECORD, "depends_on": ["bad"], "trigger_rule": "all_failed"},
        {"name": "never", "type": "python", "function": RECORD, "depends_on": ["ok", "bad"],
         "trigger_rule": "all_failed"},
    ]})
    rules = tf.start_run("rules")
    run = wait_run(tf, rules, "succeeded", timeout=60)  # no leaf failed: bad's failure was handled
    assert {t["name"]: t["state"] for t in run["tasks"]} == {
        "ok": "succeeded", "bad": "failed", "any": "succeeded", "fallback": "succeeded", "never": "skipped"}
    assert next(t for t in run["tasks"] if t["name"] == "never")["skip_reason"] == \
        "trigger rule all_failed: upstream 'ok' succeeded"
    ran = sorted(e["task"] for e in read_ledger(cluster.ledger) if e["run"] == rules)
    assert ran == ["any", "bad", "fallback", "ok"]  # each body once; the skipped one never
    tf.close()
