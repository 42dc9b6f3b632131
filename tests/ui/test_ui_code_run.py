"""The run page of a code run: the current wait spelled out, the steps' timeline, the published state and the
result, the "send signal" form, cancel (with its confirmation), and a blocked run's divergence with Resume. A real
worker and ``tideflow web``, both importing the test workflows (TIDEFLOW_WORKFLOW_MODULES)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver

from tests.support.cluster import Cluster
from tests.ui.harness import Page, System

pytestmark = pytest.mark.cluster_env(TIDEFLOW_WORKFLOW_MODULES="tests.support.codeflows")


def steps(page: Page) -> list[tuple[str, str, str]]:
    """The timeline's rows: (position, kind, state)."""
    return [(r.get_attribute("data-seq"), r.get_attribute("data-kind"), r.get_attribute("data-state"))
            for r in page.all("#code-timeline .step-row")]


def run_state(page: Page) -> str:
    return str(page.css("#title .badge").get_attribute("data-state"))


def send(page: Page, data: str) -> None:
    field = page.css("#signal-data")
    field.clear()
    field.send_keys(data)
    page.css("#signal-send").click()


def test_a_code_run_waiting_for_a_signal_gets_it_from_the_form(page: Page, system: System) -> None:
    run_id = system.start("approval")
    page.login(f"/runs/{run_id}")
    page.wait(lambda: page.text("#code-waiting") == "waiting for signal approve, no timeout",
              message="the page should spell out the wait")
    assert not page.css("#graph-card").is_displayed() and page.css("#code-timeline-card").is_displayed()
    assert not page.css("#retry-btn").is_displayed()  # a code run is started again, not retried
    assert steps(page) == [("0", "signal", "running")]
    assert json.loads(page.text("#code-state")) == {"stage": "waiting"}
    assert page.css("#signal-name").get_attribute("value") == "approve"  # filled in from the wait

    send(page, "{nope")  # not JSON: said in the page, nothing sent
    page.wait(lambda: "The data is not JSON" in page.text("#signal-msg"))
    assert system.run(run_id)["steps"][0]["state"] == "running"

    send(page, '{"ok": 1}')
    page.wait(lambda: "Signal approve sent" in page.text("#signal-msg"))
    page.wait(lambda: steps(page) == [("0", "signal", "succeeded"), ("1", "signal", "running")],
              message="the first wait should end and the second begin, live")
    send(page, "2")
    page.wait(lambda: run_state(page) == "succeeded", message="the run should succeed once both signals came")
    assert json.loads(page.text("#code-result")) == {"approved": [{"ok": 1}, 2]}
    assert page.text("#code-waiting") == "finished: succeeded"
    assert page.css("#signal-send").get_attribute("disabled") is not None
    history = page.wait(lambda: [r.text for r in page.all("#history-body tr")
                                 if "signal 'approve'" in r.text and "env" in r.text] or None)
    assert len(history) >= 2


def test_a_child_is_linked_and_a_sleeping_run_is_cancelled_after_confirming(page: Page, system: System) -> None:
    parent_id = system.start("sleepy_parent")
    child_id = system.wait_run(parent_id, "running")["children"][0]["id"]
    page.login(f"/runs/{parent_id}")
    page.wait(lambda: page.text("#code-waiting") == f"waiting for child run {child_id} (sleeper)")
    assert steps(page) == [("0", "subworkflow", "running")]
    page.css(f'#code-timeline .step-row a[href="/runs/{child_id}"]').click()

    page.wait(lambda: page.path() == f"/runs/{child_id}", message="the child's link should open its page")
    due = system.run(child_id)["steps"][0]["due_at"]
    page.wait(lambda: page.text("#code-waiting") == f"sleeping until {due}")
    assert steps(page) == [("0", "timer", "running")]
    bar = page.css('#code-timeline .bar[data-kind="timer"]')  # a span to its due time, an hour away
    assert "sleeping until" in bar.text and float(bar.value_of_css_property("width").rstrip("px")) > 100

    page.css("#cancel-btn").click()
    page.wait(lambda: page.css("#confirm-dialog").is_displayed(), message="cancel should ask first")
    page.css("#confirm-no").click()
    assert system.run(child_id)["state"] == "running"
    page.css("#cancel-btn").click()
    page.wait(lambda: page.css("#confirm-dialog").is_displayed())
    page.css("#confirm-yes").click()
    page.wait(lambda: run_state(page) == "cancelled", message="the run should be cancelled")
    assert [(s, k) for s, k, _ in steps(page)] == [("0", "timer")]


@pytest.fixture
def deployed(cluster: Cluster, browser: webdriver.Chrome, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Page, System]]:
    """A worker running version 2 of the ``deployed`` workflow (an incompatible change) and a web process
    running version 1: a run the web process starts blocks when the worker replays it."""
    monkeypatch.delenv("TIDEFLOW_TEST_CODE_VERSION", raising=False)
    cluster.env["TIDEFLOW_TEST_CODE_VERSION"] = "2"
    cluster.start_worker()
    del cluster.env["TIDEFLOW_TEST_CODE_VERSION"]
    _proc, base_url = cluster.start_web()
    system = System(cluster, base_url, tmp_path)
    try:
        yield Page(browser, system), system
    finally:
        system.cancel_running()
        system.close()


def test_a_blocked_code_run_shows_its_divergence_and_resumes(deployed: Any) -> None:
    page, system = deployed
    run_id = system.start("deployed", {"seconds": 3600})
    system.wait_run(run_id, "blocked", timeout=60)
    page.login(f"/runs/{run_id}")
    page.wait(lambda: page.css("#code-blocked").is_displayed(), message="the divergence should be shown")
    divergence = dict(zip([e.text for e in page.all("#divergence dt")], [e.text for e in page.all("#divergence dd")],
                          strict=True))
    assert divergence == {"Position": "0", "The history holds": "activity 'add'",
                          "The code asked for": "activity 'refund'"}
    assert "nondeterministic code" in page.text("#divergence-message")
    assert run_state(page) == "blocked" and page.css("#cancel-btn").is_enabled()

    page.css("#resume-btn").click()  # the web process runs version 1: its replay goes on
    page.wait(lambda: "Resumed: the run is running" in page.text("#resume-msg"))
    page.wait(lambda: page.text("#code-waiting").startswith("sleeping until"),
              message="after resume the run should sleep (its next step)")
    assert not page.css("#code-blocked").is_displayed()
    assert [k for _, k, _ in steps(page)] == ["activity", "timer"]


def test_force_success_with_a_result_and_rerun_from_a_step_of_a_code_run(page: Page, system: System,
                                                                         tmp_path: Path) -> None:
    """Select a step in the timeline: a failed activity step of a failed run offers "Mark succeeded" with a result
    (JSON) and "Rerun from here"; the run is replayed with the result; rerun resets the finished run to a step,
    whose superseded steps stay on the page, greyed, below the history."""
    path = tmp_path / "marks"
    Path(f"{path}.fail").touch()
    run_id = system.start("resettable", {"path": str(path)})
    system.wait_run(run_id, "failed")
    page.login(f"/runs/{run_id}")
    page.wait(lambda: steps(page) == [("0", "activity", "succeeded"), ("1", "activity", "failed")],
              message="the failed run's steps")
    assert not page.css("#task-actions").is_displayed()

    page.css('#code-timeline .step-row[data-seq="0"] .gantt-label').click()  # succeeded: only rerun
    page.wait(lambda: page.css("#rerun-btn").is_displayed() and not page.css("#force-success-btn").is_displayed(),
              message="a succeeded step of a finished run offers only rerun")
    page.css('#code-timeline .step-row[data-seq="1"] .gantt-label').click()
    page.wait(lambda: page.css("#force-success-btn").is_displayed() and page.css("#force-result").is_displayed(),
              message="a failed activity step offers force-success with a result")
    field = page.css("#force-result")
    field.send_keys("{nope")
    page.css("#force-success-btn").click()
    page.wait(lambda: "The result is not JSON" in page.text("#task-action-msg"))
    assert system.run(run_id)["state"] == "failed"  # nothing was sent
    field.clear()
    field.send_keys('{"v": 5}')
    page.css("#force-success-btn").click()
    page.wait(lambda: page.text("dialog#confirm-dialog[open] #confirm-title") == "Mark step counted_gated#1 succeeded?",
              message="force-success should ask first")
    assert 'with the result {"v": 5}' in page.text("dialog#confirm-dialog[open]")
    page.css("#confirm-yes").click()
    system.wait_run(run_id, "succeeded", timeout=60)
    page.wait(lambda: run_state(page) == "succeeded" and page.text("#code-result") != "null",
              message="the page did not follow the replayed run to its end")
    assert json.loads(page.text("#code-result")) == {"a": 1, "b": {"v": 5}, "c": 1}
    assert page.text("#task-action-msg").startswith("Task counted_gated#1 marked succeeded")

    Path(f"{path}.fail").unlink()
    page.css('#code-timeline .step-row[data-seq="1"] .gantt-label').click()
    page.wait(lambda: page.css("#rerun-btn").is_displayed() and not page.css("#force-success-btn").is_displayed())
    page.css("#rerun-btn").click()
    page.wait(lambda: page.text("dialog#confirm-dialog[open] #confirm-title")
              == f"Reset run #{run_id} resettable to step counted_gated#1?", message="rerun should ask first")
    page.css("#confirm-yes").click()
    system.wait_run(run_id, "succeeded", timeout=60)
    page.wait(lambda: json.loads(page.text("#code-result") or "null") == {"a": 1, "b": 2, "c": 2},
              message="the rerun's result")
    page.wait(lambda: [(r.get_attribute("data-seq"), r.get_attribute("data-state"))
                       for r in page.all("#code-timeline .superseded-row")] == [("1", "succeeded"), ("2", "succeeded")],
              message="the superseded steps should stay on the page")
    assert "Superseded by a reset (2)" in page.text(".superseded-head")
    assert steps(page) == [(str(i), "activity", "succeeded") for i in range(3)]
    # a superseded step offers no command
    page.css('#code-timeline .superseded-row[data-seq="2"] .gantt-label').click()
    page.wait(lambda: not page.css("#task-actions").is_displayed(), message="a superseded step offers no command")
