"""The run page's run-control buttons (issue 12): pause and resume in the run header, force-success and rerun in
the task detail panel; each asks to confirm (TF.confirmAction) and shows the API's answer."""

from __future__ import annotations

from pathlib import Path

from tests.ui.harness import Page, System
from tests.ui.test_ui_run_page import GATED, ONCE, coloured, history_rows, open_run


def confirm(page: Page, title: str) -> None:
    page.wait(lambda: page.text("dialog#confirm-dialog[open] #confirm-title") == title,
              message=f"no confirmation '{title}'")
    page.css("#confirm-yes").click()


def test_pause_and_resume_buttons(page: Page, system: System, tmp_path: Path) -> None:
    system.register("gated", GATED)
    gate = tmp_path / "gate"
    run_id = system.start("gated", {"gate": str(gate)})
    system.wait_task(run_id, "wait", "running")
    open_run(page, run_id)
    page.wait(lambda: page.css("#pause-btn").is_displayed() and page.css("#pause-btn").is_enabled(),
              message="pause must be offered while the run is running")
    assert not page.css("#unpause-btn").is_displayed()

    page.css("#pause-btn").click()
    confirm(page, f"Pause run #{run_id} gated?")
    page.wait(lambda: page.text("#title .badge") == "paused", message="the page never showed the run paused")
    assert system.run(run_id)["state"] == "paused"
    page.wait(lambda: page.text("#live-text") == "Paused" and page.css("#unpause-btn").is_displayed()
              and not page.css("#pause-btn").is_displayed(), message="resume must replace pause")
    assert page.text("#action-msg").startswith("Run paused")
    assert page.css("#cancel-btn").is_enabled()  # a paused run can be cancelled

    gate.touch()  # the running task finishes; the next one does not start
    system.wait_task(run_id, "wait", "succeeded")
    page.wait(lambda: coloured(page, {"wait": "succeeded", "after": "pending"}), message="not shown live while paused")
    assert system.task(run_id, "after")["state"] == "pending"

    page.css("#unpause-btn").click()
    confirm(page, f"Resume run #{run_id} gated?")
    system.wait_run(run_id, "succeeded", timeout=30)
    page.wait(lambda: coloured(page, {"wait": "succeeded", "after": "succeeded"}) and
              page.text("#title .badge") == "succeeded", message="the page did not follow the resumed run")
    assert page.text("#action-msg").startswith("Run resumed")
    page.wait(lambda: any(r[1] == "run" and r[3] == "running → paused" for r in history_rows(page))
              and any(r[1] == "run" and r[3] == "paused → running" for r in history_rows(page)),
              message="the history does not show the pause and the resume")


def test_force_success_and_rerun_buttons_in_the_task_panel(page: Page, system: System, tmp_path: Path) -> None:
    system.register("once", ONCE)
    run_id = system.start("once", {"marker": str(tmp_path / "marker")})
    system.wait_run(run_id, "failed")
    open_run(page, run_id)
    page.wait(lambda: coloured(page, {"first": "succeeded", "fragile": "failed"}), message="failed run not shown")

    page.css('#tasks-body tr[data-task="fragile"]').click()
    page.wait(lambda: page.css("#force-success-btn").is_displayed() and page.css("#rerun-btn").is_displayed(),
              message="a failed task of a failed run offers force-success and rerun")
    page.css("#force-success-btn").click()
    confirm(page, "Mark task fragile succeeded?")
    system.wait_run(run_id, "succeeded", timeout=30)
    page.wait(lambda: page.text("#title .badge") == "succeeded" and coloured(page, {"fragile": "succeeded"}),
              message="the page did not show the forced task and the run's end")
    assert page.text("#task-action-msg").startswith("Task fragile marked succeeded")
    fragile = system.task(run_id, "fragile")
    assert [a["outcome"] for a in fragile["attempts"]] == ["failed"]  # it did not run again
    page.wait(lambda: not page.css("#force-success-btn").is_displayed() and page.css("#rerun-btn").is_displayed(),
              message="a succeeded task of a finished run offers only rerun")

    # a refused command shows the API's message (force the hidden button: the task is not failed)
    page.js("const b = document.getElementById('force-success-btn'); b.hidden = false; b.click();")
    confirm(page, "Mark task fragile succeeded?")
    page.wait(lambda: "only a failed task can be forced to success" in page.text("#task-action-msg"),
              message="the API's 409 was not shown")
    assert "alert-error" in (page.css("#task-action-msg").get_attribute("class") or "")

    # rerun from the first task: it and fragile run again (fragile now succeeds: its marker exists)
    page.css('#tasks-body tr[data-task="first"]').click()
    page.wait(lambda: page.css("#rerun-btn").is_displayed(), message="rerun not offered for the first task")
    page.css("#rerun-btn").click()
    confirm(page, f"Rerun run #{run_id} once from task first?")
    page.wait(lambda: page.text("#task-action-msg").startswith("Rerunning from task first"),
              message="the rerun was not acknowledged")
    system.wait_run(run_id, "succeeded", timeout=30)
    run = system.run(run_id)
    attempts = {t["name"]: [a["outcome"] for a in t["attempts"]] for t in run["tasks"]}
    assert attempts == {"first": ["succeeded", "succeeded"], "fragile": ["failed", "succeeded"]}
    page.wait(lambda: page.text("#title .badge") == "succeeded" and not page.css("#force-success-btn").is_displayed(),
              message="the page did not follow the rerun to its end")
