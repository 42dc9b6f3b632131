"""Branching on the run page: a skipped task says why (a false ``when:``, a branch its switch did not choose, its
trigger rule), in the task's detail, the task table and the history; the switch shows its choice."""

from __future__ import annotations

from tests.ui.harness import Page, System
from tests.ui.test_ui_run_page import coloured, history_rows, open_run

BRANCHY = """
name: branchy
params: {region: "eu", loud: false}
tasks:
  - name: route
    type: switch
    cases: [{when: "params.region == 'eu'", next: eu}]
    default: other
  - {name: eu, type: shell, command: "echo eu", depends_on: [route]}
  - {name: other, type: shell, command: "echo other", depends_on: [route]}
  - {name: shout, type: shell, command: "echo LOUD", depends_on: [eu], when: "params.loud"}
  - {name: after_other, type: shell, command: "echo after", depends_on: [other]}
"""


def detail(page: Page, task: str, *, expect: str) -> str:
    """Select the task in the graph and wait for its detail to show ``expect``; its text."""
    page.css(f'#dag g.node[data-task="{task}"]').click()
    return str(page.wait(lambda: (lambda t: t if expect in t else None)(page.text("#task-detail")),
                         message=f"the detail of {task} never showed {expect!r}"))


def test_a_skipped_task_shows_why(page: Page, system: System) -> None:
    system.register("branchy", BRANCHY)
    run_id = system.start("branchy")
    system.wait_run(run_id, "succeeded")
    open_run(page, run_id)
    page.wait(lambda: coloured(page, {"route": "succeeded", "eu": "succeeded", "other": "skipped",
                                      "shout": "skipped", "after_other": "skipped"}),
              message="the graph never showed the branches' states")

    text = detail(page, "other", expect="switch 'route' chose 'eu'")
    assert page.text("#task-detail .skip-reason") == "switch 'route' chose 'eu'"
    assert "Error" not in text  # skipped on purpose: no error block
    detail(page, "shout", expect="when: params.loud was false")
    assert page.text("#task-detail .skip-reason") == "when: params.loud was false"
    assert page.text("#task-detail .task-when") == "when: params.loud"
    detail(page, "after_other", expect="trigger rule all_success: upstream 'other' was skipped")
    # the task table carries the reason on the state, the history on the event
    assert page.css('#tasks-body tr[data-task="shout"] td[title]').get_attribute("title") == \
        "when: params.loud was false"
    rows = page.wait(lambda: history_rows(page) or None, message="no history")
    assert ["other", "0", "pending → skipped"] in [r[1:4] for r in rows]
    assert any(r[1] == "other" and r[5] == "switch 'route' chose 'eu'" for r in rows), rows
    # the switch itself: its choice is its result
    detail(page, "route", expect='"next"')
    assert '"eu"' in page.text("#task-detail .task-result")
