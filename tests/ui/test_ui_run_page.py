"""The run page: the DAG coloured by state and updated live, the attempts' timeline, task logs, the history,
cancel and retry, links between parent and child runs, and user data shown as text only."""

from __future__ import annotations

import json
from pathlib import Path

from tests.ui.harness import STATE_RGB, Page, System, rgb

GATED = """
name: gated
params: {gate: ""}
tasks:
  - name: wait
    type: shell
    command: "while [ ! -e {{ params.gate }} ]; do sleep 0.1; done; echo opened"
    timeout: 300
  - {name: after, type: shell, command: "echo after", depends_on: [wait]}
"""
FLAKY = """
name: flaky
params: {marker: ""}
tasks:
  - name: flaky
    type: shell
    retries: 1
    retry_delay: 0
    command: >-
      if [ -e {{ params.marker }} ]; then echo second try;
      else touch {{ params.marker }}; echo first try; exit 1; fi
"""
ONCE = """
name: once
params: {marker: ""}
tasks:
  - {name: first, type: shell, command: "echo first"}
  - {name: fragile, type: shell, retries: 0, depends_on: [first],
     command: "if [ -e {{ params.marker }} ]; then echo fixed; else touch {{ params.marker }}; exit 3; fi"}
"""
LONG = "name: long\ntasks:\n  - {name: nap, type: shell, command: 'sleep 600', timeout: 900}\n"
TALK = """
name: talk
params: {who: "nobody"}
tasks:
  - {name: hello, type: shell, command: "echo hello from {{ params.who }}"}
  - {name: second, type: shell, command: "echo second output", depends_on: [hello]}
"""
CHATTY = """
name: chatty
params: {gate1: "", gate2: ""}
tasks:
  - name: talk
    type: shell
    timeout: 300
    command: >-
      echo first line; while [ ! -e {{ params.gate1 }} ]; do sleep 0.05; done;
      echo second line; while [ ! -e {{ params.gate2 }} ]; do sleep 0.05; done; echo done
"""
CHILD = "name: kid\ntasks:\n  - {name: play, type: shell, command: 'echo playing'}\n"
PARENT = """
name: grown
tasks:
  - {name: prepare, type: shell, command: "echo prepare"}
  - {name: delegate, type: subworkflow, workflow: kid, depends_on: [prepare]}
"""


def open_run(page: Page, run_id: int) -> None:
    page.login(f"/runs/{run_id}")
    page.wait(lambda: page.all("#dag svg g.node"), message="the run page never drew its graph")


def history_rows(page: Page) -> list[list[str]]:
    """The history table's cells (time, task, attempt, change, actor, reason) as text, oldest first."""
    return list(page.js("return [...document.querySelectorAll('#history-body tr')]"
                        ".map(r => [...r.cells].map(c => c.textContent.trim()))"))


def coloured(page: Page, expected: dict[str, str]) -> bool:
    """Every named node shows its expected state: data-state, class and the state's fixed colour."""
    nodes = page.nodes()
    return all(
        name in nodes and nodes[name]["state"] == state and f"state-{state}" in nodes[name]["cls"].split()
        and rgb(nodes[name]["fill"]) == STATE_RGB[state]
        for name, state in expected.items()
    )


def test_dag_nodes_change_colour_live_and_history_lists_the_changes(page: Page, system: System,
                                                                    tmp_path: Path) -> None:
    system.register("gated", GATED)
    gate = tmp_path / "gate"
    run_id = system.start("gated", {"gate": str(gate)})
    open_run(page, run_id)
    page.mark()
    page.wait(lambda: coloured(page, {"wait": "running", "after": "pending"}),
              message="the graph never showed 'wait' running (blue) and 'after' pending (grey)")
    assert page.text("#title .badge") == "running"
    assert page.text("#live-text") == "Live"
    edge = page.css('#dag path.edge[data-from="wait"][data-to="after"]')
    assert edge.is_displayed()
    nodes = page.nodes()
    assert nodes["after"]["rect"]["x"] > nodes["wait"]["rect"]["x"] + nodes["wait"]["rect"]["width"]

    gate.touch()
    page.wait(lambda: coloured(page, {"wait": "succeeded", "after": "succeeded"}),
              message="the nodes never turned succeeded (green) without a reload")
    assert page.same_document(), "the page was reloaded: it must update itself"
    page.wait(lambda: page.text("#title .badge") == "succeeded", message="the header never showed the final state")
    page.wait(lambda: page.text("#live-text") == "Finished", message="polling did not stop at the end")

    history = page.wait(lambda: history_rows(page) if "all tasks succeeded" in page.text("#history-body") else None,
                        message="the history table never showed the run's end")
    assert history[0][1:4] == ["run", "", "new → running"], history
    assert [r[1:4] for r in history if r[1] == "wait"] == [
        ["wait", "1", "pending → submitted"], ["wait", "1", "submitted → running"],
        ["wait", "1", "running → succeeded"]], history
    assert history[-1][1:] == ["run", "", "running → succeeded", history[-1][4], "all tasks succeeded"], history


def test_gantt_shows_a_retried_task_as_two_bars(page: Page, system: System, tmp_path: Path) -> None:
    system.register("flaky", FLAKY)
    run_id = system.start("flaky", {"marker": str(tmp_path / "marker")})
    run = system.wait_run(run_id, "succeeded")
    assert [a["outcome"] for a in run["tasks"][0]["attempts"]] == ["failed", "succeeded"]

    open_run(page, run_id)
    bars = page.wait(lambda: page.bars("flaky") if len(page.bars("flaky")) == 2 else None,
                     message="the timeline does not show two bars for the retried task")
    first, second = bars
    assert (first["attempt"], first["outcome"]) == (1, "failed")
    assert (second["attempt"], second["outcome"]) == (2, "succeeded")
    assert first["text"].startswith("#1 failed") and second["text"].startswith("#2 succeeded")
    assert rgb(first["colour"]) == STATE_RGB["failed"] and rgb(second["colour"]) == STATE_RGB["succeeded"]
    assert second["top"] >= first["top"] + first["height"], "the attempts' bars overlap"
    assert first["width"] > 0 and second["width"] > 0 and first["left"] <= second["left"]


def test_clicking_a_node_or_a_task_row_shows_its_logs(page: Page, system: System) -> None:
    system.register("talk", TALK)
    run_id = system.start("talk", {"who": "the ui test"})
    system.wait_run(run_id, "succeeded")
    open_run(page, run_id)

    page.css('#dag g.node[data-task="hello"]').click()
    page.wait(lambda: page.text('#task-detail pre.log[data-attempt="1"]') == "hello from the ui test",
              message="clicking the node did not show its log")
    assert page.text("#task-title") == "Task hello"
    assert "selected" in page.nodes()["hello"]["cls"].split()

    page.css('#tasks-body tr[data-task="second"]').click()
    page.wait(lambda: page.text('#task-detail pre.log[data-attempt="1"]') == "second output",
              message="clicking the task row did not show its log")
    assert page.text("#task-title") == "Task second"


def test_a_running_attempts_log_is_shown_and_grows_while_it_runs(page: Page, system: System,
                                                                   tmp_path: Path) -> None:
    """Live logs: the output printed so far shows before the attempt ends, and new lines appear in place."""
    system.register("chatty", CHATTY)
    gate1, gate2 = tmp_path / "gate1", tmp_path / "gate2"
    run_id = system.start("chatty", {"gate1": str(gate1), "gate2": str(gate2)})
    open_run(page, run_id)
    page.css('#tasks-body tr[data-task="talk"]').click()
    log = '#task-detail pre.log[data-attempt="1"]'
    page.wait(lambda: page.text(log) == "first line", message="the running attempt's output never showed")
    assert system.task(run_id, "talk")["state"] == "running"
    assert page.text("#task-state .badge") == "running" and "Live" in page.text("#task-detail .log-live")
    page.js("document.querySelector(arguments[0]).dataset.kept = 'yes'", log)

    gate1.touch()
    page.wait(lambda: page.text(log) == "first line\nsecond line", message="the new line never showed")
    assert page.css(log).get_attribute("data-kept") == "yes", "the log was redrawn, not updated in place"
    assert system.task(run_id, "talk")["state"] == "running"

    gate2.touch()
    page.wait(lambda: page.text("#task-state .badge") == "succeeded", message="the task's end was not shown")
    page.wait(lambda: page.text(log) == "first line\nsecond line\ndone", message="the final output is not shown")
    assert not page.all("#task-detail .log-live")


def test_cancel_button_cancels_a_running_run(page: Page, system: System) -> None:
    system.register("long", LONG)
    run_id = system.start("long")
    system.wait_task(run_id, "nap", "running")
    open_run(page, run_id)
    page.wait(lambda: page.css("#cancel-btn").is_enabled(), message="cancel must be enabled while running")
    assert not page.css("#retry-btn").is_enabled()

    # cancel asks first: dismissing the dialog changes nothing
    page.css("#cancel-btn").click()
    page.wait(lambda: page.css("dialog#confirm-dialog[open]"), message="cancel did not ask to confirm")
    assert page.text("#confirm-title") == f"Cancel run #{run_id} long?"
    assert "cannot be undone" in page.text("#confirm-message")
    page.css("#confirm-no").click()
    page.wait(lambda: not page.all("dialog#confirm-dialog"), message="the dialog did not close")
    page.wait(lambda: page.text("#live-text") == "Live", message="the page stopped polling")
    assert system.run(run_id)["state"] == "running" and page.css("#action-msg").get_attribute("hidden") is not None

    page.css("#cancel-btn").click()
    page.wait(lambda: page.css("dialog#confirm-dialog[open] #confirm-yes"), message="no dialog").click()
    system.wait_run(run_id, "cancelled", timeout=30)
    page.wait(lambda: page.text("#title .badge") == "cancelled", message="the page never showed the cancel")
    page.wait(lambda: coloured(page, {"nap": "cancelled"}), message="the node was not shown cancelled")
    assert page.text("#action-msg") == "Run cancelled."
    page.wait(lambda: page.css("#retry-btn").is_enabled() and not page.css("#cancel-btn").is_enabled(),
              message="after a cancel, retry must be enabled and cancel disabled")

    # a refused action shows the API's message (force the disabled button: the run is already cancelled)
    page.js("const b = document.getElementById('cancel-btn'); b.disabled = false; b.click();")
    page.wait(lambda: page.css("dialog#confirm-dialog[open] #confirm-yes"), message="no dialog").click()
    page.wait(lambda: "already cancelled" in page.text("#action-msg"), message="the API's error was not shown")
    assert "alert-error" in (page.css("#action-msg").get_attribute("class") or "")

    # the history says who cancelled it: the actor the API recorded for the run's cancel
    events = system.http.get(f"/api/runs/{run_id}/history").json()
    cancel = next(e for e in events if e["task"] is None and e["to"] == "cancelled")
    assert cancel["actor"]
    page.wait(lambda: any(r[1] == "run" and r[3] == "running → cancelled" and r[4] == cancel["actor"]
                          for r in history_rows(page)), message="the history does not show who cancelled the run")


def test_retry_button_reruns_a_failed_run(page: Page, system: System, tmp_path: Path) -> None:
    system.register("once", ONCE)
    run_id = system.start("once", {"marker": str(tmp_path / "marker")})
    failed = system.wait_run(run_id, "failed")
    open_run(page, run_id)
    page.wait(lambda: coloured(page, {"first": "succeeded", "fragile": "failed"}), message="failed run not shown")
    page.wait(lambda: page.css("#retry-btn").is_enabled(), message="retry must be enabled for a failed run")
    assert not page.css("#cancel-btn").is_enabled()
    assert failed["error"] and page.text("#run-error") == failed["error"]

    page.css("#retry-btn").click()
    page.wait(lambda: page.text("dialog#confirm-dialog[open] #confirm-title") == f"Retry run #{run_id} once?",
              message="retry did not ask to confirm")
    page.css("#confirm-yes").click()
    system.wait_run(run_id, "succeeded")
    page.wait(lambda: coloured(page, {"first": "succeeded", "fragile": "succeeded"}),
              message="the page did not follow the retried run to its end")
    page.wait(lambda: page.text("#title .badge") == "succeeded", message="header not updated after retry")
    assert page.text("#action-msg").startswith("Run restarted")
    assert not page.css("#retry-btn").is_enabled()


def test_parent_and_child_runs_link_to_each_other(page: Page, system: System) -> None:
    system.register("kid", CHILD)
    system.register("grown", PARENT)
    run_id = system.start("grown")
    run = system.wait_run(run_id, "succeeded")
    child_id = next(t["child_run_id"] for t in run["tasks"] if t["name"] == "delegate")
    assert child_id

    open_run(page, run_id)
    link = page.wait(lambda: page.css('#tasks-body tr[data-task="delegate"] a.run-ref'),
                     message="no link to the child run")
    assert link.text == f"#{child_id}"
    link.click()
    page.wait(lambda: page.path() == f"/runs/{child_id}", message="the child link did not open the child run")
    parent = page.wait(lambda: page.css("#meta a.run-ref"), message="the child run does not link to its parent")
    assert parent.text == f"#{run_id}"
    assert "task delegate" in page.text("#meta")


def test_html_in_user_data_is_shown_as_text(page: Page, system: System) -> None:
    system.register("talk", TALK)
    evil = '<img src=x onerror="window.__injected=1"><b class="injected">bold</b><script>window.__injected=2</script>'
    run_id = system.start("talk", {"who": evil})
    system.wait_run(run_id, "succeeded")
    open_run(page, run_id)

    shown = page.wait(lambda: page.js("return document.getElementById('params').textContent"),
                      message="the params were not shown")
    assert json.loads(shown) == {"who": evil}  # the text itself, as JSON
    assert page.js("return document.getElementById('params').children.length") == 0
    page.css('#dag g.node[data-task="hello"]').click()
    page.wait(lambda: page.text('#task-detail pre.log[data-attempt="1"]') == f"hello from {evil}",
              message="the log was not shown as text")
    assert page.js("return document.querySelectorAll('.injected, img[src=x], main script').length") == 0
    assert page.js("return window.__injected === undefined")
