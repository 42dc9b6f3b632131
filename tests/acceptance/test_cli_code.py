"""The ``tideflow`` command line for code workflows (issue 10): ``run start`` converting ``-p`` values by the
function's type hints, ``--key``, ``run signal``, ``run cancel``, ``run resume``, ``run replay``, ``run show`` and
``workflow list`` of both kinds, ``--wait`` on a blocked run, and a module of ``TIDEFLOW_WORKFLOW_MODULES`` that
does not import.

Most tests run the CLI in process (``app.cli.main``, the entry point) against a client whose broker is the
in-process stub (``app.testing.StubDispatcher``), on PostgreSQL and SQLite: the test delivers the messages a
command published (``stub.drain``). The last tests run ``python -m app.cli`` as a subprocess, with real Celery
workers where runs must progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from app import cli as cli_mod
from app.client import Tideflow
from app.config import load_settings
from app.runtime import Runtime
from app.services import views
from app.testing import StubDispatcher
from tests.support import codeflows
from tests.support.cluster import REPO_ROOT
from tests.support.harness import client_for, wait_run
from tests.support.wait import wait_until

MODULES = "tests.support.codeflows,tests.support.codeflows_cli"

HELLO = """\
name: hello
params: {who: world}
tasks:
  - {name: greet, type: shell, command: "echo hello {{ params.who }}"}
"""


@dataclass
class Out:
    code: int
    stdout: str
    stderr: str

    def error_line(self) -> str:
        """The single ``error:`` line of a failed command."""
        assert self.code != 0, (self.code, self.stdout, self.stderr)
        lines = self.stderr.splitlines()
        assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{self.stderr}"
        assert lines[0].startswith("error: "), self.stderr
        assert "Traceback" not in self.stdout + self.stderr
        return lines[0]


class Harness:
    def __init__(self, db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
        self.stub = StubDispatcher()
        self.rt = Runtime.create(load_settings(database_url=db_url, workflow_modules=MODULES), self.stub)
        self.tf = Tideflow(self.rt)
        self.capsys = capsys
        monkeypatch.setattr(cli_mod, "_client", lambda: self.tf)
        # tables as a 160-column terminal draws them, whatever the width of the one running the tests
        monkeypatch.setattr(cli_mod, "console", Console(width=160))

    def cli(self, *args: str) -> Out:
        """``tideflow ARGS`` in process, then deliver what it published."""
        self.capsys.readouterr()
        try:
            cli_mod.main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = self.capsys.readouterr()
        self.stub.drain(self.rt)
        return Out(code, captured.out, captured.err)

    def ok(self, *args: str) -> str:
        out = self.cli(*args)
        assert out.code == 0, (args, out)
        return out.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def run(self, run_id: int) -> dict[str, Any]:
        return self.tf.run(run_id)

    def started(self, *args: str) -> int:
        return int(self.json("run", "start", *args)["id"])


@pytest.fixture
def h(db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    codeflows.CALLS.clear()
    codeflows.FAIL.clear()
    harness = Harness(db_url, capsys, monkeypatch)
    yield harness
    harness.rt.close()


# -- run start: -p by type hint ---------------------------------------------------------------------------


def test_p_values_are_converted_by_the_parameters_type_hints(h: Harness) -> None:
    run_id = h.started("typed", "-p", "n=7", "-p", "ratio=2", "-p", "flag=yes", "-p", "label=123",
                       "-p", 'opts={"a": [1, 2]}', "-p", "items=[3, 4]", "-p", "maybe=none", "-p", "old_style=1.5",
                       "-p", "mode=slow", "-p", "loose=[1]", "-p", "bare=not json")
    run = h.run(run_id)
    assert run["state"] == "succeeded", run
    # what the function received: a str hint keeps "123" a string (JSON would make it an int), a float hint
    # makes "2" a float, None from "none" for an optional hint; without a hint: JSON if it parses, else a string
    assert run["result"] == {
        "n": ["int", 7], "ratio": ["float", 2.0], "flag": ["bool", True], "label": ["str", "123"],
        "opts": ["dict", {"a": [1, 2]}], "items": ["list", [3, 4]], "maybe": ["NoneType", None],
        "old_style": ["float", 1.5], "mode": ["str", "slow"], "loose": ["list", [1]], "bare": ["str", "not json"],
    }
    run_id = h.started("typed", "-p", "n=-1", "-p", "ratio=0.5", "-p", "flag=false", "-p", "label=x=y",
                       "-p", "opts={}", "-p", "items=[]", "-p", "maybe=5", "-p", "bare=[1, 2]")
    result = h.run(run_id)["result"]
    assert (result["n"], result["flag"], result["label"], result["maybe"], result["bare"]) == (
        ["int", -1], ["bool", False], ["str", "x=y"], ["int", 5], ["list", [1, 2]])
    assert result["old_style"] == ["NoneType", None] and result["mode"] == ["str", "fast"]  # the defaults


@pytest.mark.parametrize(("param", "expected"), [
    ("n=abc", "parameter 'n' (int): 'abc' is not an int"),
    ("n=1.5", "parameter 'n' (int): '1.5' is not an int"),
    ("ratio=nan", "parameter 'ratio' (float): 'nan' is not a finite float"),
    ("flag=maybe", "parameter 'flag' (bool): 'maybe' is not a bool"),
    ("opts=[1]", "parameter 'opts' (dict[str, Any]): '[1]' is not JSON of a dict"),
    ("items={", "parameter 'items' (list[int]): '{' is not JSON of a list"),
    ("maybe=x", "parameter 'maybe' (int | None): 'x' is not an int or null"),
    ("mode=medium", "parameter 'mode' (Literal['fast', 'slow']): 'medium' is not one of \"fast\", \"slow\""),
])
def test_a_value_that_does_not_fit_its_hint_is_one_line_and_stores_nothing(
        h: Harness, param: str, expected: str) -> None:
    good = ["n=1", "ratio=1", "flag=true", "label=a", "opts={}", "items=[]"]
    name = param.split("=")[0]
    args = [a for p in good if p.split("=")[0] != name for a in ("-p", p)]
    line = h.cli("run", "start", "typed", *args, "-p", param).error_line()
    assert line.startswith(f"error: workflow 'typed': {expected}"), line
    assert h.tf.read(views.list_runs) == []
    # the code workflow is not even stored (it is stored when a run of it first starts)
    (typed,) = [w for w in h.json("workflow", "list") if w["name"] == "typed"]
    assert typed["version"] is None


def test_code_workflow_views_carry_typed_parameters(h: Harness) -> None:
    """``workflow list`` (and ``GET /api/workflows``: the same view) types a code workflow's parameters by its
    hints, required when there is no default: what the UI's start form is built from."""
    (typed,) = [w for w in h.json("workflow", "list") if w["name"] == "typed"]
    got = {p["name"]: (p["type"], p["default"], p["required"]) for p in typed["parameters"]}
    assert got == {
        "n": ("integer", None, True), "ratio": ("number", None, True), "flag": ("boolean", None, True),
        "label": ("string", None, True), "opts": ("object", None, True), "items": ("array", None, True),
        "maybe": ("integer", None, False), "old_style": ("number", None, False), "mode": ("string", "fast", False),
        "loose": ("any", None, False), "bare": ("any", None, False)}
    assert [p["enum"] for p in typed["parameters"] if p["name"] == "mode"] == [["fast", "slow"]]
    run_id = h.started("typed", "-p", "n=1", "-p", "ratio=1", "-p", "flag=true", "-p", "label=a", "-p", "opts={}",
                       "-p", "items=[]")
    (stored,) = [w for w in h.json("workflow", "list") if w["name"] == "typed"]
    assert stored["version"] == 1 and stored["parameters"] == typed["parameters"]
    assert h.json("workflow", "show", "typed")["parameters"] == typed["parameters"]
    assert h.run(run_id)["state"] == "succeeded"


def test_unknown_and_missing_parameters_are_one_line(h: Harness) -> None:
    assert h.cli("run", "start", "adder", "-p", "x=1", "-p", "z=2").error_line() == (
        "error: workflow 'adder': 'z' is not a parameter (declared: x, y)")
    assert h.cli("run", "start", "adder").error_line() == "error: workflow 'adder': parameter 'x' is required"
    assert h.tf.read(views.list_runs) == []


TYPED_DAG = """\
name: typed-dag
params:
  who: world
  version: "1.0"
  n: {type: integer, description: how many}
  loose: null
tasks:
  - {name: greet, type: shell, command: "echo {{ params.who }} {{ params.n }}"}
"""


def test_dag_parameters_convert_by_their_declared_type(h: Harness, tmp_path: Path) -> None:
    path = tmp_path / "typed.yaml"
    path.write_text(TYPED_DAG)
    h.ok("workflow", "register", str(path))
    shown = [line.split() for line in h.ok("workflow", "show", "typed-dag").splitlines()]
    assert ["│", "n", "│", "integer", "│", "(required)", "│", "how", "many", "│"] in shown, shown
    assert ["│", "version", "│", "string", "│", '"1.0"', "│", "│"] in shown, shown
    run_id = h.started("typed-dag", "-p", "who=123", "-p", "version=1.10", "-p", "n=7", "-p", "loose=[1]")
    # a string stays the text ("1.10" is not 1.1); the untyped one (default null) is JSON if it parses
    assert h.run(run_id)["params"] == {"who": "123", "version": "1.10", "n": 7, "loose": [1]}
    assert h.run(h.started("typed-dag", "-p", "n=1", "-p", "loose=not json"))["params"]["loose"] == "not json"
    before = h.tf.read(views.list_runs)
    assert h.cli("run", "start", "typed-dag", "-p", "n=abc").error_line() == (
        "error: workflow 'typed-dag': parameter 'n' (integer): 'abc' is not an integer")
    assert h.cli("run", "start", "typed-dag").error_line() == "error: workflow 'typed-dag': parameter 'n' is required"
    assert h.tf.read(views.list_runs) == before


# -- run start --key ---------------------------------------------------------------------------------------


def test_start_key_twice_gives_the_same_run(h: Harness) -> None:
    first = h.ok("run", "start", "adder", "-p", "x=1", "--key", "order-1")
    again = h.cli("run", "start", "adder", "-p", "x=1", "--key", "order-1")
    assert again.code == 0, again
    (run,) = h.tf.read(views.list_runs)
    assert first.strip() == f"started run {run['id']}"
    assert again.stdout.strip() == f"existing run {run['id']} (key 'order-1' is held by it)"
    assert run["key"] == "order-1" and run["state"] == "succeeded"
    assert [c for c in codeflows.CALLS if c == ("add", (1, 1))] == [("add", (1, 1))]  # ran once
    # --json: stdout is the run's JSON either way; an existing run is said on stderr
    shown = h.cli("run", "start", "adder", "-p", "x=1", "--key", "order-1", "--json")
    assert json.loads(shown.stdout)["id"] == run["id"] and "existing run" in shown.stderr
    other = h.json("run", "start", "adder", "-p", "x=1", "--key", "order-2")
    assert other["id"] != run["id"] and other["key"] == "order-2"


# -- signals, cancel, show -------------------------------------------------------------------------------


def test_signal_with_data_and_key(h: Harness) -> None:
    run_id = h.started("approval")
    assert h.run(run_id)["state_values"] == {"stage": "waiting"}
    sent = h.ok("run", "signal", str(run_id), "approve", "--data", '{"by": "ann"}', "--key", "k1")
    assert sent.startswith("sent signal 'approve' #") and f"to run {run_id}" in sent
    dup = h.ok("run", "signal", str(run_id), "approve", "--data", '{"by": "someone else"}', "--key", "k1")
    assert "already sent" in dup and "not sent again" in dup
    assert h.run(run_id)["state"] == "running"  # the duplicate did not count as the second approval
    bad = h.cli("run", "signal", str(run_id), "approve", "--data", "{not json")
    assert bad.code == 2 and bad.stderr.startswith("error: Invalid value for --data: not JSON"), bad
    h.ok("run", "signal", str(run_id), "approve")  # no --data: null
    run = h.run(run_id)
    assert run["state"] == "succeeded", run
    assert run["result"] == {"approved": [{"by": "ann"}, None]}

    # a finished run: one clear line
    line = h.cli("run", "signal", str(run_id), "approve").error_line()
    assert line == f"error: run {run_id} is already succeeded: signal 'approve' was not delivered"
    assert h.cli("run", "signal", "999", "approve").error_line() == "error: run 999 does not exist"


def test_cancel_a_code_run_runs_its_compensation(h: Harness) -> None:
    run_id = h.started("cancellable", "-p", "order_id=3")
    assert h.run(run_id)["tasks"][-1]["type"] == "timer"
    said = h.cli("run", "cancel", str(run_id))
    assert said.code == 0, said
    run = h.run(run_id)
    assert run["state"] == "cancelled", run  # the stub delivered the compensation the cancel started
    assert ("refund", 3) in codeflows.CALLS
    # the command said the cancel was requested (the compensation had not run yet when it printed)
    assert said.stdout.startswith(f"cancel requested for run {run_id}: tideflow.Cancelled is raised"), said
    assert h.cli("run", "cancel", str(run_id)).error_line() == f"error: run {run_id} is already cancelled"


def test_show_prints_result_and_state_values(h: Harness) -> None:
    run_id = h.started("adder", "-p", "x=2", "-p", "y=3")
    text = h.ok("run", "show", str(run_id))
    assert 'result: {"first": 5, "left": 6, "right": 7}' in text, text
    assert 'state_values: {"stage": "added"}' in text, text
    assert "add#0" in text and "add#2" in text
    shown = h.json("run", "show", str(run_id))
    assert shown["result"] == {"first": 5, "left": 6, "right": 7} and shown["state_values"] == {"stage": "added"}
    assert shown["kind"] == "code"


def test_workflow_list_shows_both_kinds(h: Harness, tmp_path: Path) -> None:
    path = tmp_path / "hello.yaml"
    path.write_text(HELLO)
    h.ok("workflow", "register", str(path))
    h.started("adder", "-p", "x=1")  # stores adder's workflow row (version 1)
    rows = {w["name"]: w for w in h.json("workflow", "list")}
    assert rows["hello"]["kind"] == "dag" and rows["hello"]["version"] == 1
    assert rows["adder"]["kind"] == "code" and rows["adder"]["version"] == 1
    assert (rows["adder"]["module"], rows["adder"]["function"]) == ("tests.support.codeflows", "adder")
    assert rows["typed"]["kind"] == "code" and rows["typed"]["version"] is None  # registered, never started
    text = h.ok("workflow", "list")
    lines = {line.split()[1]: line for line in text.splitlines() if line.startswith("│")}
    assert "code" in lines["adder"] and "tests.support.codeflows:adder" in lines["adder"], text
    assert "dag" in lines["hello"], text
    assert "tests.support.codeflows_cli:typed" in lines["typed"], text


def test_run_list_filters_by_kind_and_shows_parent_run(h: Harness, tmp_path: Path) -> None:
    path = tmp_path / "hello.yaml"
    path.write_text(HELLO)
    h.ok("workflow", "register", str(path))
    dag = h.started("hello")
    parent = h.started("code_parent", "-p", "x=1")
    codes = h.json("run", "list", "--kind", "code")
    assert {r["kind"] for r in codes} == {"code"} and parent in [r["id"] for r in codes]
    children = [r for r in codes if r["parent_run_id"] == parent]
    assert [r["workflow"] for r in children] == ["adder", "adder"], codes
    assert [r["id"] for r in h.json("run", "list", "--kind", "dag")] == [dag]
    assert "'bogus' is not one of 'dag', 'code'" in h.cli("run", "list", "--kind", "bogus").error_line()


# -- blocked runs: replay, resume, --wait ---------------------------------------------------------------


def test_blocked_run_replay_resume_and_wait(h: Harness) -> None:
    state = {"changed": False}

    @codeflows.tideflow.workflow(name="changing_cli")
    def changing_cli(ctx: Any) -> str:
        if state["changed"]:
            ctx.activity(codeflows.refund, 1)  # at position 0, where the history holds another call
        else:
            ctx.activity(codeflows.add, 1, 1)
        ctx.wait_signal("go")
        return "done"

    run_id = h.started("changing_cli", "--key", "blocked-1")
    assert h.ok("run", "replay", str(run_id)).startswith(f"ok: run {run_id} (changing_cli): 2 step(s) replayed")
    state["changed"] = True
    # the replay check, before "deploying": exit 1 with the divergence
    diverged = h.cli("run", "replay", str(run_id))
    assert diverged.code == 1, diverged
    assert diverged.stdout.startswith(f"diverged: run {run_id} (changing_cli): divergence at position 0"), diverged
    assert "activity 'add'" in diverged.stdout and "activity 'refund'" in diverged.stdout
    report = json.loads(h.cli("run", "replay", str(run_id), "--json").stdout)
    assert report["ok"] is False and report["divergence"].startswith("position 0")

    h.ok("run", "signal", str(run_id), "go")  # the replay this leads to diverges: the run is blocked
    run = h.run(run_id)
    assert run["state"] == "blocked", run

    # --wait on a blocked run returns at once, exit 1, and says what to do
    waited = h.cli("run", "start", "changing_cli", "--key", "blocked-1", "--wait", "--timeout", "30")
    assert waited.code == 1, waited
    assert f"existing run {run_id}" in waited.stdout
    assert f"run {run_id} is blocked" in waited.stderr and "position 0" in waited.stderr
    assert f"tideflow run resume {run_id}" in waited.stderr and "still" not in waited.stderr

    # resume with the code still changed: blocked again, exit 1
    again = h.cli("run", "resume", str(run_id))
    assert again.error_line().startswith(f"error: run {run_id} is still blocked: nondeterministic code: position 0")
    # the fix: replay passes, resume continues it
    state["changed"] = False
    assert h.cli("run", "replay", str(run_id)).code == 0
    assert h.ok("run", "resume", str(run_id)).strip() == f"resumed blocked run {run_id} (now succeeded)"
    assert h.run(run_id)["result"] == "done"
    assert h.cli("run", "resume", str(run_id)).error_line() == (
        f"error: run {run_id} is succeeded; only a paused run or a blocked code run can be resumed")
    assert h.cli("run", "replay", "999").error_line() == "error: run 999 does not exist"


# -- subprocesses ------------------------------------------------------------------------------------------


def _tideflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_a_module_that_does_not_import_is_one_line_naming_it(tmp_path: Path, sqlite_url: str) -> None:
    (tmp_path / "broken_flows.py").write_text("import tideflow\n\nraise RuntimeError('half-written module')\n")
    base = {**os.environ, "TIDEFLOW_DATABASE_URL": sqlite_url,
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)])}
    cases = {
        "tests.support.no_such_flows": "error: TIDEFLOW_WORKFLOW_MODULES: cannot import module "
                                       "'tests.support.no_such_flows': ModuleNotFoundError: No module named "
                                       "'tests.support.no_such_flows'",
        "broken_flows": "error: TIDEFLOW_WORKFLOW_MODULES: cannot import module 'broken_flows': RuntimeError: "
                        "half-written module",
    }
    for module, expected in cases.items():
        env = {**base, "TIDEFLOW_WORKFLOW_MODULES": f"tests.support.codeflows,{module}"}
        for args in (("workflow", "list"), ("run", "start", "adder", "-p", "x=1")):
            done = _tideflow(env, *args)
            assert done.returncode == 1, (args, done.stdout, done.stderr)
            assert done.stderr.splitlines() == [expected], done.stderr
            assert "Traceback" not in done.stdout + done.stderr
        # a celery worker (and beat: the same app module) stops at start, with the same one line
        worker = subprocess.run([sys.executable, "-m", "celery", "-A", "tasks", "worker"], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=120, check=False)
        assert worker.returncode == 1, worker.stdout + worker.stderr
        assert worker.stderr.splitlines() == [expected], worker.stderr


@pytest.fixture
def cluster_db_url(pg_url: str) -> str:
    return pg_url


@pytest.mark.cluster_env(TIDEFLOW_WORKFLOW_MODULES=MODULES)
def test_code_runs_through_the_cli_with_workers(cluster: Any) -> None:
    """Real ``celery worker`` processes: typed -p, --key, --wait, signal and cancel from the command line."""
    cluster.start_worker("w1", concurrency=2)

    def start(*args: str) -> subprocess.CompletedProcess[str]:
        return cluster.run_cli("run", "start", *args)

    first = start("adder", "-p", "x=2", "-p", "y=3", "--key", "add-1", "--wait", "--timeout", "60")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "started run" in first.stdout and "succeeded" in first.stdout
    again = start("adder", "-p", "x=2", "-p", "y=3", "--key", "add-1", "--wait", "--timeout", "60", "--json")
    assert again.returncode == 0, again.stderr
    shown = json.loads(again.stdout)
    assert shown["result"] == {"first": 5, "left": 6, "right": 7} and shown["state_values"] == {"stage": "added"}
    assert "existing run" in again.stderr

    approval = json.loads(start("approval", "-p", "timeout=none", "--json").stdout)
    cancellable = json.loads(start("cancellable", "-p", "order_id=4", "--json").stdout)
    assert approval["params"] == {"timeout": None}
    tf = client_for(cluster)
    try:
        for data, key in (('{"by": "ann"}', "s1"), ('{"by": "ann"}', "s1"), ('"bob"', "s2")):
            cluster.run_cli("run", "signal", str(approval["id"]), "approve", "--data", data, "--key", key, check=True)
        done = wait_run(tf, approval["id"], "succeeded", timeout=60)
        assert done["result"] == {"approved": [{"by": "ann"}, "bob"]}

        # the cancel lands while the run sleeps (its charge activity first runs on the worker)
        wait_until(lambda: any(t["type"] == "timer" for t in tf.run(cancellable["id"])["tasks"]), timeout=60,
                   message="the cancellable run never reached its sleep")
        cluster.run_cli("run", "cancel", str(cancellable["id"]), check=True)
        cancelled = wait_run(tf, cancellable["id"], "cancelled", timeout=60)
        assert [t["name"] for t in cancelled["tasks"]] == ["charge#0", "sleep#1", "refund#2"]
        assert cancelled["tasks"][-1]["state"] == "succeeded"  # the compensation ran on the worker
    finally:
        tf.close()


# -- workflow validate, register's signature check, run start --dry-run (issue 11) -------------------------------


def _python_dag(args: str, function: str = "tests.support.jobs:fail_unless_exists") -> str:
    return ("name: pyjob\nparams: {marker: /tmp/x}\ntasks:\n"
            f"  - {{name: job, type: python, function: \"{function}\", args: {args}}}\n")


def test_workflow_validate_checks_as_register_does_and_stores_nothing(h: Harness, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(_python_dag('{marker: "{{ params.marker }}"}'))
    assert h.ok("workflow", "validate", str(good)).splitlines() == [
        f"ok: {good} is a valid definition of workflow pyjob (nothing stored)"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nparams: {n: {type: int}}\ntasks:\n  - {name: a, type: shell, command: 'true'}\n")
    assert h.cli("workflow", "validate", str(bad)).error_line() == (
        'error: params.n: type "int" is not one of string, integer, number, boolean, array, object, any')
    clash = tmp_path / "clash.yaml"  # a check only registration makes (a code workflow holds the name)
    clash.write_text("name: typed\ntasks:\n  - {name: a, type: shell, command: 'true'}\n")
    assert "a DAG cannot take its name" in h.cli("workflow", "validate", str(clash)).error_line()
    assert [w for w in h.tf.read(views.list_workflows) if w["version"] is not None] == []  # nothing stored


def test_register_checks_a_python_tasks_signature_against_its_args(h: Harness, tmp_path: Path) -> None:
    path = tmp_path / "pyjob.yaml"
    path.write_text(_python_dag('{marker: "{{ params.marker }}", extra: 1}'))
    for command in ("validate", "register"):
        line = h.cli("workflow", command, str(path)).error_line()
        assert line == ("error: task 'job': function 'tests.support.jobs:fail_unless_exists' (context, marker) does "
                        "not take its args: got an unexpected keyword argument 'extra'"), line
    path.write_text(_python_dag("{}"))
    assert "missing a required argument: 'marker'" in h.cli("workflow", "register", str(path)).error_line()
    path.write_text(_python_dag("{marker: x}", function="tests.support.jobs:no_such_function"))
    assert h.cli("workflow", "register", str(path)).error_line() == (
        "error: task 'job': function 'tests.support.jobs:no_such_function': module 'tests.support.jobs' has no "
        "attribute 'no_such_function'")
    assert [w for w in h.tf.read(views.list_workflows) if w["name"] == "pyjob"] == []  # nothing stored


def test_a_module_not_importable_here_is_a_warning_not_a_failure(h: Harness, tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.yaml"
    path.write_text(_python_dag("{anything: 1}", function="only_on_the_workers.jobs:run"))
    out = h.cli("workflow", "register", str(path))
    assert out.code == 0, out
    assert out.stderr.splitlines() == [
        "warning: task 'job': module 'only_on_the_workers.jobs' is not importable here: the signature of "
        "'only_on_the_workers.jobs:run' is not checked"]
    assert out.stdout.splitlines() == ["registered pyjob version 1"]
    assert h.json("workflow", "show", "pyjob")["version"] == 1


def test_run_start_dry_run_converts_and_checks_and_stores_nothing(h: Harness, tmp_path: Path) -> None:
    path = tmp_path / "typed.yaml"
    path.write_text(TYPED_DAG)
    h.ok("workflow", "register", str(path))
    assert h.ok("run", "start", "typed-dag", "-p", "n=3", "-p", "version=1.10", "--dry-run").splitlines() == [
        'ok: a run of typed-dag would start with params {"loose": null, "n": 3, "version": "1.10", "who": "world"} '
        "(dry run: nothing stored)"]
    assert h.json("run", "start", "typed", "-p", "n=1", "-p", "ratio=2", "-p", "flag=no", "-p", "label=1.10",
                  "-p", "opts={}", "-p", "items=[1]", "--dry-run") == {
        "workflow": "typed", "params": {"n": 1, "ratio": 2.0, "flag": False, "label": "1.10", "opts": {},
                                        "items": [1]}}
    assert h.cli("run", "start", "typed-dag", "-p", "n=x", "--dry-run").error_line() == (
        "error: workflow 'typed-dag': parameter 'n' (integer): 'x' is not an integer")
    assert h.cli("run", "start", "typed-dag", "--dry-run").error_line() == (
        "error: workflow 'typed-dag': parameter 'n' is required")
    assert h.cli("run", "start", "nope", "--dry-run").error_line() == "error: workflow 'nope' is not registered"
    assert h.tf.read(views.list_runs) == []
    assert [w for w in h.tf.read(views.list_workflows) if w["name"] == "typed"][0]["version"] is None
    assert h.stub.published == []
