"""Limits on the run page: a task held back by a full pool says so in its row, a queued run says why in its
header and can be cancelled."""

from __future__ import annotations

from tests.ui.harness import Page, System

LIMITED = """
name: limited
max_active_runs: 1
tasks:
  - {name: load, type: shell, command: "echo loaded", pool: ui}
"""


def test_a_task_waiting_for_a_pool_and_a_queued_run_say_why(page: Page, system: System) -> None:
    system.cluster.run_cli("pool", "set", "ui", "0", check=True)
    system.register("limited", LIMITED)
    first, second = system.start("limited"), system.start("limited")
    assert system.run(second)["state"] == "queued"

    page.login(f"/runs/{first}")
    row = '#tasks-body tr[data-task="load"] .waiting-for'
    page.wait(lambda: page.all(row), message="the held task's row never said what it waits for")
    assert page.text(row) == "waiting for pool ui: 0/0 in use"

    page.open(f"/runs/{second}")
    page.wait(lambda: page.all("#run-waiting-for"), message="the queued run never said why")
    assert page.text("#run-waiting-for") == "waiting for max_active_runs of limited: 1/1 running"
    assert page.text("#title .badge") == "queued"
    page.wait(lambda: page.css("#cancel-btn").is_enabled(), message="a queued run can be cancelled")
    page.css("#cancel-btn").click()
    page.wait(lambda: page.css("dialog#confirm-dialog[open] #confirm-yes"), message="no dialog").click()
    system.wait_run(second, "cancelled", timeout=30)

    system.cluster.run_cli("pool", "set", "ui", "1", check=True)  # the slot: the held task starts
    system.wait_run(first, "succeeded", timeout=60)
    page.open(f"/runs/{first}")
    page.wait(lambda: page.text("#title .badge") == "succeeded", message="the page never showed the end")
    assert not page.all(row)
