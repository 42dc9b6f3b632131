"""The workflows pages: both kinds listed; a workflow's page with its versions and definition (DAG) or module and
function (code), a "start run" form built from the declared parameters, and the grid of recent runs x tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.support.select import Select

from tests.ui.harness import STATE_RGB, Page, System, rgb

pytestmark = pytest.mark.cluster_env(TIDEFLOW_WORKFLOW_MODULES="tests.support.codeflows")

TYPED = """
name: typed
params:
  n: 3
  name: "x"
  flag: false
  tags: []
  day: {type: string, default: "1.10", description: "a day, kept as text"}
  size: {type: string, enum: [small, large], default: small}
tasks:
  - {name: show, type: shell, command: "echo {{ params.n }} {{ params.day }}"}
"""
MIXED = """
name: mixed
params: {gate: ""}
tasks:
  - name: first
    type: shell
    command: "test ! -e {{ params.gate }}.fail || exit 3; echo first"
  - name: wait
    type: shell
    timeout: 300
    command: "while [ ! -e {{ params.gate }} ]; do sleep 0.1; done"
    depends_on: [first]
"""


def open_workflow(page: Page, name: str) -> None:
    page.login(f"/workflows/{name}")
    page.wait(lambda: page.text("#workflow-name") == name, message=f"the page of {name} never loaded")


def field(page: Page, name: str):  # noqa: ANN201 - a WebElement
    return page.css(f'#start-fields [data-param="{name}"]')


def runs(system: System) -> list[dict]:
    return list(system.http.get("/api/runs", params={"limit": 500}).json()["items"])


def test_the_list_shows_both_kinds_and_links_to_each_workflow(page: Page, system: System) -> None:
    system.register("typed", TYPED)
    page.login("/")
    page.css('.topbar nav a[href="/workflows"]').click()
    page.wait(lambda: page.path() == "/workflows" and page.all('#workflows-body tr[data-workflow="typed"]'),
              message="the nav link did not lead to the workflows list")
    dag = page.css('#workflows-body tr[data-workflow="typed"]')
    assert dag.get_attribute("data-kind") == "dag"
    cells = [c.text for c in dag.find_elements("css selector", "td")]
    assert cells[:4] == ["typed", "dag", "1", "1 task"], cells
    assert "n: integer" in cells[4] and "day: string" in cells[4] and "tags: array" in cells[4], cells
    code = page.css('#workflows-body tr[data-workflow="adder"]')
    cells = [c.text for c in code.find_elements("css selector", "td")]
    assert cells[1:4] == ["code", "—", "tests.support.codeflows:adder"], cells
    assert cells[4] == "x: integer, y: integer", cells

    page.css('#workflows-body tr[data-workflow="adder"] a.workflow-link').click()
    page.wait(lambda: page.path() == "/workflows/adder" and page.text("#workflow-name") == "adder",
              message="the workflow link did not open its page")
    assert page.text("#code-module") == "tests.support.codeflows" and page.text("#code-function") == "adder"
    assert page.css("#definition-card").get_attribute("hidden") is not None
    assert page.text("#grid-empty") == "No runs yet: start one above."


def test_the_start_form_is_built_from_the_declared_parameters_and_starts_a_run(page: Page, system: System) -> None:
    system.register("typed", TYPED)
    open_workflow(page, "typed")
    kinds = {n: (field(page, n).tag_name, field(page, n).get_attribute("type")) for n in
             ("n", "name", "flag", "tags", "day", "size")}
    assert kinds == {"n": ("input", "number"), "name": ("input", "text"), "flag": ("input", "checkbox"),
                     "tags": ("textarea", "textarea"), "day": ("input", "text"), "size": ("select", "select-one")}
    assert field(page, "day").get_attribute("value") == "1.10"
    assert "a day, kept as text" in page.text('#start-fields [data-field="day"]')
    assert page.text("#definition-title") == "Definition (version 1)" and '"name": "typed"' in page.text("#definition")

    # a value of the wrong type: the API's one-line 422 next to the form, nothing started
    field(page, "n").clear()
    field(page, "n").send_keys("1.5")
    page.css("#start-btn").click()
    error = page.wait(lambda: page.text("#start-error") or None, message="the 422 was not shown")
    assert "n" in error and "integer" in error and "\n" not in error, error
    assert runs(system) == [] and page.path() == "/workflows/typed"
    # JSON that does not parse: said before anything is sent
    field(page, "n").clear()
    field(page, "n").send_keys("5")
    field(page, "tags").clear()
    field(page, "tags").send_keys("[oops")
    page.css("#start-btn").click()
    page.wait(lambda: page.text("#start-error").startswith("parameter tags: not valid JSON"),
              message="invalid JSON was not reported")
    assert runs(system) == []

    field(page, "tags").clear()
    field(page, "tags").send_keys('["a", 1]')
    field(page, "flag").click()
    Select(field(page, "size")).select_by_visible_text("large")
    page.css("#start-btn").click()
    page.wait(lambda: page.path().startswith("/runs/"), message="the start did not open the new run")
    run_id = int(page.path().split("/")[2])
    run = system.wait_run(run_id, "succeeded")
    assert run["params"] == {"n": 5, "name": "x", "flag": True, "tags": ["a", 1], "day": "1.10", "size": "large"}
    assert system.task(run_id, "show")["result"] == "5 1.10"


def test_without_typed_parameters_the_form_falls_back_to_the_older_views(page: Page, system: System) -> None:
    """An API without ``parameters`` (an older web process): a DAG's ``definition.params`` defaults (type from the
    default) and a code workflow's ``params`` names (any type) still build the form."""
    system.register("typed", TYPED)
    open_workflow(page, "typed")
    declared = page.js("""return [
        TFParams.declared({kind: 'dag', definition: {params: {n: 3, day: '1.10', on: true, xs: [1], o: {}}}}),
        TFParams.declared({kind: 'code', params: ['x', 'y']})];""")
    assert [(p["name"], p["type"], p["default"]) for p in declared[0]] == [
        ("n", "integer", 3), ("day", "string", "1.10"), ("on", "boolean", True), ("xs", "array", [1]),
        ("o", "object", {})]
    assert [(p["name"], p["type"], p["required"]) for p in declared[1]] == [("x", "any", False), ("y", "any", False)]
    # and the form built from them: an "any" field takes JSON, so 2 is a number and "2" a string
    page.js("document.getElementById('start-fields').replaceChildren(...TFParams.fields(arguments[0]))", declared[1])
    field(page, "x").send_keys("2")
    field(page, "y").send_keys('"2"')
    assert page.js("return TFParams.read(document.getElementById('start-form'), arguments[0])", declared[1]) == {
        "x": 2, "y": "2"}


def test_a_code_workflow_starts_from_its_typed_parameters(page: Page, system: System) -> None:
    open_workflow(page, "adder")
    assert field(page, "x").get_attribute("type") == "number" and field(page, "y").get_attribute("value") == "1"
    assert "required" in page.text('#start-fields [data-field="x"] label')
    page.css("#start-btn").click()  # x missing
    error = page.wait(lambda: page.text("#start-error") or None, message="the missing parameter was not reported")
    assert "x" in error, error
    field(page, "x").send_keys("2")
    page.css("#start-btn").click()
    page.wait(lambda: page.path().startswith("/runs/"), message="the start did not open the new run")
    run = system.wait_run(int(page.path().split("/")[2]), "succeeded")
    assert run["kind"] == "code" and run["params"] == {"x": 2, "y": 1}
    assert run["result"] == {"first": 3, "left": 4, "right": 5}


def test_versions_show_their_definition_and_an_older_one_can_be_started(page: Page, system: System) -> None:
    system.register("typed", TYPED)
    system.register("typed", TYPED.replace("n: 3", "n: 4").replace("echo {{ params.n }}", "echo v2 {{ params.n }}"))
    open_workflow(page, "typed")
    assert [o.text for o in Select(page.css("#version")).options] == ["2 (latest)", "1"]
    assert field(page, "n").get_attribute("value") == "4" and "echo v2" in page.text("#definition")
    assert page.text("#start-note") == ""

    Select(page.css("#version")).select_by_value("1")
    page.wait(lambda: page.text("#definition-title") == "Definition (version 1)", message="version 1 not shown")
    assert "echo v2" not in page.text("#definition") and page.js("return location.search") == "?version=1"
    assert field(page, "n").get_attribute("value") == "3"
    assert page.text("#start-note") == "starts version 1 (not the latest)"
    page.css("#start-btn").click()
    page.wait(lambda: page.path().startswith("/runs/"), message="the start did not open the new run")
    run = system.wait_run(int(page.path().split("/")[2]), "succeeded")
    assert run["workflow_version"] == 1 and run["params"]["n"] == 3


def test_the_grid_shows_recent_runs_by_tasks_coloured_by_state_and_live(page: Page, system: System,
                                                                         tmp_path: Path) -> None:
    system.register("mixed", MIXED)
    failing, gate = tmp_path / "a", tmp_path / "b"
    Path(f"{failing}.fail").touch()
    failed = system.start("mixed", {"gate": str(failing)})
    system.wait_run(failed, "failed")
    done = system.start("mixed", {"gate": str(gate)})
    system.wait_task(done, "wait", "running")

    open_workflow(page, "mixed")

    def cells() -> dict[tuple[int, str], str]:
        return {(int(c["run"]), c["task"]): c["state"] for c in page.js(
            "return [...document.querySelectorAll('#grid a.grid-cell')]"
            ".map(a => ({run: a.dataset.runId, task: a.dataset.task, state: a.dataset.state}))")}

    page.wait(lambda: cells() == {(failed, "first"): "failed", (failed, "wait"): "skipped",
                                  (done, "first"): "succeeded", (done, "wait"): "running"},
              message="the grid does not show both runs' tasks in their states")
    columns = [int(a.get_attribute("data-run-id") or 0) for a in page.all("#grid a.grid-run")]
    assert columns == [failed, done], "columns must be the runs, oldest on the left"
    assert [r.get_attribute("data-task") for r in page.all("#grid tbody tr")] == ["first", "wait"]
    failed_cell = page.css(f'#grid a.grid-cell[data-run-id="{failed}"][data-task="first"]')
    assert rgb(page.js("return getComputedStyle(arguments[0]).backgroundColor", failed_cell)) == STATE_RGB["failed"]
    bar = page.css(f'#grid a.grid-run[data-run-id="{failed}"] .grid-bar')
    assert rgb(page.js("return getComputedStyle(arguments[0]).backgroundColor", bar)) == STATE_RGB["failed"]

    # live: the running task's cell turns green without a reload, a new run appears as a new column
    page.mark()
    gate.touch()
    system.wait_run(done, "succeeded")
    third = system.start("mixed", {"gate": str(gate)})
    page.wait(lambda: cells().get((done, "wait")) == "succeeded" and (third, "first") in cells(),
              message="the grid did not follow the runs")
    assert page.same_document()
    system.wait_run(third, "succeeded")

    # a cell links to its run with that task selected
    task_id = system.task(failed, "first")["id"]
    page.css(f'#grid a.grid-cell[data-run-id="{failed}"][data-task="first"]').click()
    page.wait(lambda: page.path() == f"/runs/{failed}", message="the cell did not open its run")
    assert page.js("return location.hash") == f"#task-{task_id}"
    page.wait(lambda: page.text("#task-title") == "Task first", message="the run page did not select the task")
