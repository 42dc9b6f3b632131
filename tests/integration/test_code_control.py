"""Run control of code runs, in process (the stub broker delivers messages by calling the services), on PostgreSQL
and SQLite: force-success of a failed activity step and rerun from a position (Temporal's reset). The history is
append-only: a reset supersedes steps (kept, shown apart), the replay re-records the positions from the reset
point on. Real Celery workers: test_run_commands.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.client import Tideflow
from app.code.decider import PREFIXES
from app.config import load_settings
from app.errors import InvalidState, NotFound
from app.runtime import Runtime
from app.services import views
from app.testing import StubDispatcher


class Code:
    def __init__(self, db_url: str):
        self.stub = StubDispatcher()
        self.rt = Runtime.create(load_settings(database_url=db_url, workflow_modules="tests.support.codeflows"),
                                 self.stub)
        self.tf = Tideflow(self.rt)

    def start(self, workflow: str, params: dict[str, Any]) -> int:
        run_id = self.tf.start_run(workflow, params)
        self.stub.drain(self.rt)
        return run_id

    def run(self, run_id: int) -> dict[str, Any]:
        return self.tf.run(run_id)

    def events(self, run_id: int) -> list[dict[str, Any]]:
        return self.tf.read(views.run_history, run_id)


@pytest.fixture
def code(db_url: str) -> Iterator[Code]:
    h = Code(db_url)
    yield h
    h.rt.close()


def _steps(run: dict[str, Any]) -> list[tuple[int, str, str]]:
    return [(st["seq"], st["name"], st["state"]) for st in run["steps"]]


def _count(path: Path, name: str) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.split(" ", 1)[0] == name) if path.exists() else 0


def test_force_success_of_the_activity_that_failed_the_run(code: Code, tmp_path: Path) -> None:
    path = tmp_path / "marks"
    Path(f"{path}.fail").touch()
    run_id = code.start("resettable", {"path": str(path)})
    run = code.run(run_id)
    assert run["state"] == "failed" and "b failed (execution 1)" in run["error"]
    b = run["steps"][1]
    assert (b["seq"], b["name"], b["state"]) == (1, "counted_gated", "failed")
    before = len(code.events(run_id))

    state = code.tf.force_success(run_id, "#1", result={"forced": True}, actor="ann", reason="fixed by hand")
    assert state == (run_id, "running")
    code.stub.drain(code.rt)
    run = code.run(run_id)
    assert run["state"] == "succeeded", run
    assert run["result"] == {"a": 1, "b": {"forced": True}, "c": 1}  # ctx.activity returned the forced value
    assert run["error"] is None and run["superseded_steps"] == []
    assert [(a["attempt"], a["outcome"]) for a in run["steps"][1]["attempts"]] == [(1, "failed")]
    assert (_count(path, "a"), _count(path, "b"), _count(path, "c")) == (1, 1, 1)
    events = code.events(run_id)
    assert events[:before] == code.events(run_id)[:before]
    forced = [e for e in events if e["task"] == "counted_gated#1" and (e["from"], e["to"]) == ("failed", "succeeded")]
    assert len(forced) == 1 and forced[0]["actor"] == "ann"
    assert forced[0]["reason"] == 'forced to success by ann with result {"forced": true}: fixed by hand'
    assert any(e["task"] is None and (e["from"], e["to"], e["actor"]) == ("failed", "running", "ann")
               for e in events)
    # now it is succeeded: refused, nothing changes
    with pytest.raises(InvalidState, match="is succeeded; only a failed activity step can be forced to success"):
        code.tf.force_success(run_id, "#1")


def test_force_success_refusals(code: Code, tmp_path: Path) -> None:
    path = tmp_path / "marks"
    Path(f"{path}.fail").touch()
    run_id = code.start("resettable", {"path": str(path)})
    with pytest.raises(InvalidState, match=r"position 0 \(activity 'counted', task run \d+\) of code run \d+ is "
                                           "succeeded; only a failed activity step"):
        code.tf.force_success(run_id, "#0")
    with pytest.raises(NotFound, match=f"run {run_id} has no step at position 7 \\(its history has 2\\)"):
        code.tf.force_success(run_id, "#7")
    with pytest.raises(NotFound, match=f"run {run_id} has no task 'nope'"):
        code.tf.force_success(run_id, "nope")
    # a marker, a timer: not an activity
    sleeper = code.start("sleeper", {"seconds": 3600})
    with pytest.raises(InvalidState, match="is not an activity"):
        code.tf.force_success(sleeper, "#0")
    # a running run: a step cannot be rerun
    with pytest.raises(InvalidState, match=f"run {sleeper} is running; a step can be rerun only in a finished run"):
        code.tf.rerun(sleeper, "#0")
    # the activity name alone, when one step of the history has it
    assert code.tf.task_id(run_id, "counted_gated") == code.run(run_id)["steps"][1]["task_run_id"]


def test_force_success_of_a_caught_failure_supersedes_what_the_function_did_after_it(code: Code, tmp_path: Path
                                                                                    ) -> None:
    path = tmp_path / "marks"
    Path(f"{path}.fail").touch()
    run_id = code.start("catcher", {"path": str(path)})
    run = code.run(run_id)
    assert run["state"] == "succeeded" and run["result"] == {"b": None, "compensated": 1}
    comp_id = run["steps"][1]["task_run_id"]

    assert code.tf.force_success(run_id, "counted_gated", result=41) == (run_id, "succeeded")
    code.stub.drain(code.rt)
    run = code.run(run_id)
    assert run["result"] == {"b": 41, "compensated": None}
    assert _steps(run) == [(0, "counted_gated", "succeeded")]
    assert [(st["seq"], st["name"], st["state"], st["task_run_id"]) for st in run["superseded_steps"]] == [
        (1, "counted", "succeeded", comp_id)]  # kept as it was
    assert _count(path, "comp") == 1
    superseded = [e for e in code.events(run_id) if e["task"] == "counted#1" and e["reason"].startswith("superseded")]
    assert len(superseded) == 1 and superseded[0]["reason"] == "superseded: position 0 forced to success"
    # the superseded step cannot be acted on
    with pytest.raises(InvalidState, match="was superseded by a reset"):
        code.tf.rerun(comp_id)


def test_rerun_from_the_middle_of_a_succeeded_run(code: Code, tmp_path: Path) -> None:
    path = tmp_path / "marks"
    run_id = code.start("resettable", {"path": str(path)})
    run = code.run(run_id)
    assert run["state"] == "succeeded" and run["result"] == {"a": 1, "b": 1, "c": 1}
    old = {st["seq"]: st["task_run_id"] for st in run["steps"]}
    assert any(key[1] == run_id for key in PREFIXES._runs)  # the cache holds the run's prefix: the reset must
    # not be hidden by it (its stamp no longer matches)

    run_id2, state, reset = code.tf.rerun(run_id, "#1", actor="bob")
    assert (run_id2, state, reset) == (run_id, "running", 2)
    code.stub.drain(code.rt)
    run = code.run(run_id)
    assert run["state"] == "succeeded", run
    assert run["result"] == {"a": 1, "b": 2, "c": 2}  # a replayed from history, b and c ran anew
    assert (_count(path, "a"), _count(path, "b"), _count(path, "c")) == (1, 2, 2)
    assert run["steps"][0]["task_run_id"] == old[0]
    assert {st["seq"]: st["task_run_id"] for st in run["steps"]}.keys() == {0, 1, 2}
    assert all(run["steps"][i]["task_run_id"] != old[i] for i in (1, 2))
    assert [(st["seq"], st["task_run_id"], st["state"]) for st in run["superseded_steps"]] == [
        (1, old[1], "succeeded"), (2, old[2], "succeeded")]
    assert all(st["superseded_at"] for st in run["superseded_steps"])
    # twice: the second reset supersedes the steps the first one re-recorded
    assert code.tf.rerun(run_id, "#2")[2] == 1
    code.stub.drain(code.rt)
    run = code.run(run_id)
    assert run["result"] == {"a": 1, "b": 2, "c": 3} and len(run["superseded_steps"]) == 3
    events = code.events(run_id)
    assert [(e["from"], e["to"], e["actor"]) for e in events if e["task"] is None].count(
        ("succeeded", "running", "bob")) == 1
    # replay of the stored history agrees with the code
    assert code.tf.replay(run_id).ok


def test_rerun_redelivers_a_consumed_signal_and_starts_a_new_child(code: Code, tmp_path: Path) -> None:
    path = tmp_path / "marks"
    run_id = code.start("signalled", {"path": str(path)})
    code.tf.signal(run_id, "go", {"by": "ann"})
    code.stub.drain(code.rt)
    run = code.run(run_id)
    assert run["state"] == "succeeded", run
    first = run["result"]
    old_child = run["steps"][3]["child_run_id"]
    assert _steps(run)[1] == (1, "go", "succeeded")

    assert code.tf.rerun(run_id, "#1")[2] == 4
    code.stub.drain(code.rt)
    run = code.run(run_id)
    assert run["state"] == "succeeded", run
    assert run["result"]["go"] == {"by": "ann"}  # the signal delivered before is delivered again
    assert run["result"]["uuid"] != first["uuid"]  # recorded values after the reset point are recorded anew
    assert run["result"]["after"] == 2 and _count(path, "a") == 1
    new_child = run["steps"][3]["child_run_id"]
    assert new_child != old_child  # a new child run; the old one is kept, as it ended
    assert code.run(old_child)["state"] == "succeeded"
    assert {c["id"] for c in run["children"]} >= {old_child, new_child}


def test_cancelled_run_rerun_from_a_step_before_the_cancel(code: Code, tmp_path: Path) -> None:
    run_id = code.start("sleeper", {"seconds": 3600})
    code.tf.cancel(run_id)
    code.stub.drain(code.rt)
    assert code.run(run_id)["state"] == "cancelled"
    assert code.tf.rerun(run_id, "#0") == (run_id, "running", 1)  # the cancel request is cleared
    code.stub.drain(code.rt)
    run = code.run(run_id)
    assert run["state"] == "running" and not run["cancel_requested"]
    assert _steps(run) == [(0, "sleep", "running")]


def test_force_success_is_refused_while_a_later_step_is_live(code: Code, tmp_path: Path) -> None:
    path = tmp_path / "marks"
    Path(f"{path}.fail").touch()
    run_id = code.start("catch_then_sleep", {"path": str(path)})
    run = code.run(run_id)
    assert run["state"] == "running" and _steps(run) == [(0, "counted_gated", "failed"), (1, "sleep", "running")]
    with pytest.raises(InvalidState, match=f"run {run_id} is running with steps after position 0 still live \\(from "
                                           "position 1\\): forcing it would discard them"):
        code.tf.force_success(run_id, "#0", result=1)
    assert _steps(code.run(run_id))[0] == (0, "counted_gated", "failed")  # nothing changed
    code.tf.cancel(run_id)
    code.stub.drain(code.rt)
    assert code.run(run_id)["state"] == "cancelled"
    # once the run ended, the sleep is superseded and the replay takes the forced value
    assert code.tf.force_success(run_id, "#0", result=1) == (run_id, "succeeded")
    code.stub.drain(code.rt)
    run = code.run(run_id)
    assert run["result"] == 1 and not run["cancel_requested"]
    assert [(st["seq"], st["name"], st["state"]) for st in run["superseded_steps"]] == [(1, "sleep", "cancelled")]


def test_a_run_that_continued_as_new_is_not_reset(code: Code) -> None:
    run_id = code.start("counter", {"n": 0, "until": 2})
    run = code.run(run_id)
    assert run["state"] == "succeeded" and run["continued_run_id"] is not None
    with pytest.raises(InvalidState, match=f"run {run_id} continued as new \\(run {run['continued_run_id']}\\): act "
                                           "on that run instead"):
        code.tf.rerun(run_id, "#0")
