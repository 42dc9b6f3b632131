"""The runs list: new runs appear and reach their final state without a reload; filters and paging live in
the URL; auto-refresh can be paused."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.support.select import Select

from tests.support.wait import holds_for, wait_until
from tests.ui.harness import STATE_RGB, Page, System, rgb

GATED = """
name: gated
params: {gate: ""}
tasks:
  - name: wait
    type: shell
    command: "while [ ! -e {{ params.gate }} ]; do sleep 0.1; done; echo opened"
    timeout: 300
"""
OK = "name: fine\ntasks:\n  - {name: hello, type: shell, command: 'echo hello'}\n"
BOOM = "name: boom\ntasks:\n  - {name: fail, type: shell, command: 'exit 1', retries: 0}\n"


def rows(page: Page) -> list[tuple[int, str]]:
    """(run id, state) of every row shown, top to bottom."""
    return [(int(r[0]), r[1]) for r in page.js(
        "return [...document.querySelectorAll('#runs-body tr')].map(r => [r.dataset.runId, r.dataset.state])")]


def open_list(page: Page, path: str = "/") -> None:
    page.login(path)
    page.wait(lambda: page.text("#live-text").startswith("Live · updated"), message="runs list never loaded")


def test_a_new_run_appears_and_refreshes_to_its_final_state_without_reload(page: Page, system: System,
                                                                           tmp_path: Path) -> None:
    system.register("gated", GATED)
    open_list(page)
    assert rows(page) == []
    page.mark()
    gate = tmp_path / "gate"
    run_id = system.start("gated", {"gate": str(gate)})

    page.wait(lambda: (run_id, "running") in rows(page), message="the new run never appeared as running")
    badge = page.css(f'#runs-body tr[data-run-id="{run_id}"] .badge')
    assert badge.text == "running" and "state-running" in (badge.get_attribute("class") or "")
    assert page.text(f'#runs-body tr[data-run-id="{run_id}"] a.run-link') == f"#{run_id}"
    link = page.css(f'#runs-body tr[data-run-id="{run_id}"] a.run-link')
    assert (link.get_attribute("href") or "").endswith(f"/runs/{run_id}")

    gate.touch()
    page.wait(lambda: rows(page) == [(run_id, "succeeded")], message="the row never showed the final state")
    badge = page.css(f'#runs-body tr[data-run-id="{run_id}"] .badge')
    assert badge.text == "succeeded"
    assert rgb(page.js("return getComputedStyle(arguments[0], '::before').backgroundColor", badge)) == \
        STATE_RGB["succeeded"]
    assert page.same_document(), "the page was reloaded: it must refresh itself"


def test_state_and_workflow_filters_are_applied_and_kept_in_the_url(page: Page, system: System) -> None:
    system.register("fine", OK)
    system.register("boom", BOOM)
    ok_id = system.start("fine")
    bad_id = system.start("boom")
    system.wait_run(ok_id, "succeeded")
    system.wait_run(bad_id, "failed")

    open_list(page)
    page.wait(lambda: rows(page) == [(bad_id, "failed"), (ok_id, "succeeded")], message="both runs not listed")

    Select(page.css("#f-state")).select_by_value("failed")
    page.wait(lambda: rows(page) == [(bad_id, "failed")], message="the state filter was not applied")
    assert page.js("return location.search") == "?state=failed"

    Select(page.css("#f-state")).select_by_value("")
    Select(page.css("#f-workflow")).select_by_value("fine")
    page.wait(lambda: rows(page) == [(ok_id, "succeeded")], message="the workflow filter was not applied")
    assert page.js("return location.search") == "?workflow=fine"

    page.open("/?state=succeeded")  # a filtered URL opened directly
    page.wait(lambda: rows(page) == [(ok_id, "succeeded")], message="the filter in the URL was not applied")
    assert page.css("#f-state").get_attribute("value") == "succeeded"
    page.open("/?state=failed&workflow=fine")
    page.wait(lambda: page.css("#empty").is_displayed(), message="no 'no runs' message for an empty result")
    assert rows(page) == []


def test_older_pages_with_next_before(page: Page, system: System) -> None:
    system.register("fine", OK)
    ids = [system.start("fine") for _ in range(3)]
    for run_id in ids:
        system.wait_run(run_id, "succeeded")

    open_list(page, "/?limit=2")
    page.wait(lambda: [i for i, _ in rows(page)] == [ids[2], ids[1]], message="first page wrong")
    page.css("#older-btn").click()
    page.wait(lambda: [i for i, _ in rows(page)] == [ids[0]], message="the older page was not shown")
    assert page.js("return location.search") == f"?before={ids[1]}&limit=2"
    page.wait(lambda: page.css("#older-btn").get_attribute("disabled") is not None,
              message="'older' must be disabled on the last page")
    page.css("#newest-btn").click()
    page.wait(lambda: [i for i, _ in rows(page)] == [ids[2], ids[1]], message="'newest' did not go back")


def test_pausing_stops_the_auto_refresh(page: Page, system: System) -> None:
    system.register("fine", OK)
    open_list(page)
    page.css("#pause-btn").click()
    page.wait(lambda: page.text("#live-text") == "Paused", message="no visible paused state")
    assert page.css("#live").get_attribute("data-paused") == "true"
    run_id = system.start("fine")
    system.wait_run(run_id, "succeeded")
    refreshed = page.text("#live-text")
    # a refresh happens every 2 s: three periods without one show that the list is really paused
    holds_for(lambda: rows(page) == [] and page.text("#live-text") == refreshed, 6, interval=0.2,
              message="the list refreshed while paused")

    page.css("#pause-btn").click()
    page.wait(lambda: rows(page) == [(run_id, "succeeded")], message="resuming did not refresh the list")
    assert page.css("#pause-btn").text == "Pause"


KID = "name: kid\ntasks:\n  - {name: play, type: shell, command: 'echo playing'}\n"
GROWN = "name: grown\ntasks:\n  - {name: delegate, type: subworkflow, workflow: kid}\n"
WORDY = """
name: wordy
tasks:
  - name: fail
    type: python
    function: tests.support.jobs_unit:boom
    retries: 0
    args:
      message: >-
        the upstream ledger for 2026-11-30 is missing 3 partitions (eu-west, eu-north, ap-south);
        rerun the export first
"""


@pytest.mark.cluster_env(TIDEFLOW_WORKFLOW_MODULES="tests.support.codeflows")
def test_kind_and_state_filters_parent_links_and_whole_errors(page: Page, system: System) -> None:
    system.register("kid", KID)
    system.register("grown", GROWN)
    system.register("wordy", WORDY)
    parent = system.wait_run(system.start("grown"), "succeeded")
    child_id = next(t["child_run_id"] for t in parent["tasks"] if t["name"] == "delegate")
    failed = system.wait_run(system.start("wordy"), "failed")
    code_id = system.start("adder", {"x": 1})
    system.wait_run(code_id, "succeeded")

    open_list(page)
    page.wait(lambda: {i for i, _ in rows(page)} == {parent["id"], child_id, failed["id"], code_id},
              message="not every run is listed")
    # a child run names its parent, linked; the others do not
    link = page.css(f'#runs-body tr[data-run-id="{child_id}"] .parent-ref a')
    assert page.text(f'#runs-body tr[data-run-id="{child_id}"] .parent-ref') == f"child of #{parent['id']}"
    assert (link.get_attribute("href") or "").endswith(f"/runs/{parent['id']}")
    assert page.all(f'#runs-body tr[data-run-id="{parent["id"]}"] .parent-ref') == []
    # the run's error, whole: it names the failing task and what its body raised
    error = page.text(f'#runs-body tr[data-run-id="{failed["id"]}"] td.run-error')
    assert error == failed["error"] and len(error) > 120, error
    assert error.startswith("task 'fail' failed: ") and "rerun the export first" in error
    assert page.text(f'#runs-body tr[data-run-id="{code_id}"] td.run-error') == ""
    assert page.text(f'#runs-body tr[data-run-id="{code_id}"] .kind') == "code"

    Select(page.css("#f-kind")).select_by_value("code")
    page.wait(lambda: rows(page) == [(code_id, "succeeded")], message="the kind filter was not applied")
    assert page.js("return location.search") == "?kind=code"
    Select(page.css("#f-kind")).select_by_value("dag")
    page.wait(lambda: [i for i, _ in rows(page)] == [failed["id"], child_id, parent["id"]],
              message="kind=dag did not list the DAG runs only")

    Select(page.css("#f-kind")).select_by_value("")
    Select(page.css("#f-state")).select_by_value("blocked")
    page.wait(lambda: page.css("#empty").is_displayed(), message="state=blocked did not filter")
    assert rows(page) == [] and page.js("return location.search") == "?state=blocked"
    page.open("/?kind=code&state=succeeded")  # both in the URL opened directly
    page.wait(lambda: rows(page) == [(code_id, "succeeded")], message="the URL's filters were not applied")
    assert page.css("#f-kind").get_attribute("value") == "code"


@pytest.mark.cluster_env(TIDEFLOW_WORKFLOW_MODULES="tests.support.codeflows")
def test_a_blocked_code_run_is_listed_under_blocked_with_its_divergence(page: Page, system: System) -> None:
    """A code run whose deployed code no longer replays its history (tests.support.codeflows:deployed, version 2)
    is blocked: the state filter finds it and the list shows why, whole."""
    cluster = system.cluster
    run_id = system.start("deployed", {"seconds": 1})
    wait_until(lambda: any(t["type"] == "timer" for t in system.run(run_id)["tasks"]), timeout=60,
               message="the run never reached its timer")
    cluster.workers["w1"].terminate()
    cluster.env["TIDEFLOW_TEST_CODE_VERSION"] = "2"  # the incompatible deploy
    cluster.start_worker("w2")
    cluster.start_beat()  # fires the timer: the replay on the new code blocks the run
    run = system.wait_run(run_id, "blocked", timeout=60)

    open_list(page, "/?state=blocked")
    page.wait(lambda: rows(page) == [(run_id, "blocked")], message="the blocked run is not listed under blocked")
    assert page.css("#f-state").get_attribute("value") == "blocked"
    badge = page.css(f'#runs-body tr[data-run-id="{run_id}"] .badge')
    assert badge.text == "blocked"
    error = page.text(f'#runs-body tr[data-run-id="{run_id}"] td.run-error')
    assert error == run["error"] and "position 0" in error and "activity 'refund'" in error, error
