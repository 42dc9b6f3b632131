"""Workflow definition validation: every problem is reported, naming the task and the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from app.definitions import (
    check_run_params,
    find_cycle,
    load_definition_file,
    parse_definition,
    topological_order,
)
from app.errors import DefinitionError

VALID: dict[str, Any] = {
    "name": "etl",
    "description": "extract, transform, load",
    "params": {"day": "2024-01-01", "limit": 10},
    "priority": 4,
    "tasks": [
        {
            "name": "extract",
            "type": "shell",
            "command": "echo {{ params.day }}",
            "env": {"LIMIT": "{{ params.limit }}"},
        },
        {
            "name": "transform",
            "type": "python",
            "function": "examples.etl:transform",
            "args": {"day": "{{ params.day }}", "src": "{{ upstream.extract }}"},
            "depends_on": ["extract"],
            "retries": 2,
            "retry_delay": 1.5,
            "timeout": 60,
            "queue": "cpu",
            "priority": 9,
        },
        {
            "name": "load",
            "type": "python",
            "function": "examples.etl:load",
            "args": {"rows": "{{ upstream.transform.rows }}", "first": "{{ upstream.extract }}"},
            "depends_on": ["transform"],
        },
        {
            "name": "report",
            "type": "subworkflow",
            "workflow": "reporting",
            "params": {"day": "{{ params.day }}", "run": "{{ run.id }}"},
            "depends_on": ["load"],
        },
    ],
}


def wf(*tasks: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "w", **extra, "tasks": list(tasks)}


def shell(name: str, command: str = "true", **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "shell", "command": command, **kw}


def problems(raw: Any) -> list[str]:
    with pytest.raises(DefinitionError) as info:
        parse_definition(raw)
    assert str(info.value) == "; ".join(info.value.problems)
    return info.value.problems


def one_problem(raw: Any) -> str:
    found = problems(raw)
    assert len(found) == 1, found
    return found[0]


# -- valid ---------------------------------------------------------------------------------------


def test_valid_definition_parses() -> None:
    spec = parse_definition(copy.deepcopy(VALID))
    assert spec.name == "etl"
    assert [t.name for t in spec.tasks] == ["extract", "transform", "load", "report"]
    t = spec.task("transform")
    assert (t.retries, t.retry_delay, t.timeout, t.queue, t.priority) == (2, 1.5, 60, "cpu", 9)
    assert spec.task("extract").retries == 0 and spec.task("extract").priority is None
    assert spec.on_failure == "stop"
    assert topological_order(spec) == ["extract", "transform", "load", "report"]
    from app.runtime import LoadedWorkflow

    wf = LoadedWorkflow(1, spec.name, 1, spec)
    from app.definitions import task_inputs

    assert task_inputs(spec.task("report")) == ["load"]  # its direct upstream
    assert task_inputs(spec.task("load")) == ["extract", "transform"]  # + an ancestor its placeholders name
    assert wf.children["extract"] == ["transform"]
    assert find_cycle(spec) is None
    # a spec parses again to the same thing
    assert parse_definition(spec) == spec


def test_retry_delay_backoff() -> None:
    spec = parse_definition(wf(shell("a", retry_delay=2, retry_backoff=3, max_retry_delay=50)))
    from app.definitions import task_row_values
    from app.records import RetryPolicy

    row = task_row_values(spec, spec.task("a"), default_max_lost_attempts=3)
    policy = RetryPolicy(row["retries"], row["retry_delay"], row["retry_backoff"], row["max_retry_delay"])
    assert [policy.delay_for(n) for n in (1, 2, 3, 4)] == [2, 6, 18, 50]


def test_long_chain_validates_quickly() -> None:
    n = 20_000
    tasks = [shell(f"t{i}", depends_on=[f"t{i - 1}"] if i else []) for i in range(n)]
    tasks[-1]["command"] = "echo {{ upstream.t0 }}"
    spec = parse_definition(wf(*tasks))
    assert topological_order(spec)[:3] == ["t0", "t1", "t2"]


# -- structure -----------------------------------------------------------------------------------


def test_duplicate_names() -> None:
    assert one_problem(wf(shell("a"), shell("b"), shell("a"))) == "task 'a': duplicate task name"


def test_unknown_dependency() -> None:
    assert (
        one_problem(wf(shell("a", depends_on=["nope"]))) == "task 'a': depends_on names unknown task 'nope'"
    )


def test_dependency_listed_twice() -> None:
    assert "task 'b': depends_on lists a task twice" in problems(
        wf(shell("a"), shell("b", depends_on=["a", "a"]))
    )


def test_self_dependency() -> None:
    assert one_problem(wf(shell("a", depends_on=["a"]))) == "task 'a': depends on itself"


@pytest.mark.parametrize(
    "tasks",
    [
        [shell("a", depends_on=["b"]), shell("b", depends_on=["a"])],
        [
            shell("x"),
            shell("a", depends_on=["c", "x"]),
            shell("b", depends_on=["a"]),
            shell("c", depends_on=["b"]),
        ],
    ],
)
def test_cycles(tasks: list[dict[str, Any]]) -> None:
    msg = one_problem(wf(*tasks))
    assert "dependency cycle" in msg
    assert msg.startswith("task '")
    cycle = msg.split("dependency cycle ")[1].split(" -> ")
    assert cycle[0] == cycle[-1] and set(cycle) <= {"a", "b", "c"} and len(cycle) >= 3


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"name": "s", "type": "shell"}, "task 's': a shell task needs 'command'"),
        ({"name": "p", "type": "python"}, "task 'p': a python task needs 'function'"),
        ({"name": "w2", "type": "subworkflow"}, "task 'w2': a subworkflow task needs 'workflow'"),
    ],
)
def test_missing_required_field_per_type(task: dict[str, Any], message: str) -> None:
    assert one_problem(wf(task)) == message


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (shell("s", function="m:f"), "task 's': 'function' does not apply to a shell task"),
        (shell("s", args={"a": 1}), "task 's': 'args' does not apply to a shell task"),
        (shell("s", workflow="other"), "task 's': 'workflow' does not apply to a shell task"),
        (
            {"name": "p", "type": "python", "function": "m:f", "env": {"A": "1"}},
            "task 'p': 'env' does not apply to a python task",
        ),
        (
            {"name": "p", "type": "python", "function": "m:f", "command": "x"},
            "task 'p': 'command' does not apply to a python task",
        ),
        (
            {"name": "c", "type": "subworkflow", "workflow": "other", "args": {}},
            "task 'c': 'args' does not apply to a subworkflow task",
        ),
    ],
)
def test_field_that_does_not_apply(task: dict[str, Any], message: str) -> None:
    assert one_problem(wf(task)) == message


@pytest.mark.parametrize("field", [{"retries": 1}, {"timeout": 5}, {"queue": "q"}, {"max_lost_attempts": 2},
                                   {"on_lost": "fail"}])
def test_subworkflow_rejects_attempt_settings(field: dict[str, Any]) -> None:
    msg = one_problem(wf({"name": "c", "type": "subworkflow", "workflow": "other", **field}))
    assert msg.startswith("task 'c': retries, timeout, queue, max_lost_attempts and on_lost do not apply to a "
                          "subworkflow task")


def test_subworkflow_cannot_start_itself() -> None:
    msg = one_problem(wf({"name": "c", "type": "subworkflow", "workflow": "w"}))
    assert msg == "task 'c': a workflow cannot start itself as a subworkflow"


@pytest.mark.parametrize(
    "function", ["nocolon", "mod:", ":f", "mod:1f", "a..b:f", "mod:f:g", "mod.:f", "m od:f"]
)
def test_bad_function_format(function: str) -> None:
    msg = one_problem(wf({"name": "p", "type": "python", "function": function}))
    assert msg == f"task 'p': function '{function}' is not of the form 'package.module:callable'"


@pytest.mark.parametrize("function", ["m:f", "pkg.mod:f", "pkg.mod:Cls.method", "_p.m2:_f"])
def test_good_function_format(function: str) -> None:
    parse_definition(wf({"name": "p", "type": "python", "function": function}))


# -- field types and values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"retries": -1}, "retries"),
        ({"retries": "many"}, "retries"),
        ({"priority": 10}, "priority"),
        ({"priority": -1}, "priority"),
        ({"retry_delay": -1}, "retry_delay"),
        ({"retry_backoff": 0.5}, "retry_backoff"),
        ({"timeout": 0}, "timeout"),
        ({"queue": "bad queue"}, "queue"),
        ({"depends_on": "a"}, "depends_on"),
        ({"env": {"A": 1}}, "env.A"),
        ({"bogus": 1}, "bogus"),
        ({"command": ""}, "command"),
    ],
)
def test_bad_task_field(extra: dict[str, Any], field: str) -> None:
    msg = one_problem(wf(shell("a", **extra)))
    assert msg.startswith(f"task 'a': {field}: "), msg


def test_bad_type_and_name() -> None:
    assert one_problem(wf({"name": "a", "type": "bash", "command": "x"})).startswith("task 'a': type: ")
    assert one_problem(wf(shell("bad name"))).startswith("task 'bad name': name: ")
    assert one_problem(wf({"type": "shell", "command": "x"})).startswith("tasks[0]: name: ")


@pytest.mark.parametrize(
    ("raw", "start"),
    [
        ({"name": "w", "tasks": []}, "tasks: "),
        ({"name": "w"}, "tasks: "),
        ({"name": "w", "priority": 10, "tasks": [shell("a")]}, "priority: "),
        ({"name": "w", "on_failure": "explode", "tasks": [shell("a")]}, "on_failure: "),
        ({"name": "w", "colour": "red", "tasks": [shell("a")]}, "colour: "),
        ({"name": "", "tasks": [shell("a")]}, "name: "),
        ({"tasks": [shell("a")]}, "name: "),
    ],
)
def test_bad_workflow_fields(raw: dict[str, Any], start: str) -> None:
    assert one_problem(raw).startswith(start)


@pytest.mark.parametrize("raw", [[1], "text", None, 3])
def test_not_a_mapping(raw: Any) -> None:
    assert one_problem(raw).startswith("a workflow definition must be a mapping")


# -- templates -----------------------------------------------------------------------------------


def test_undeclared_param() -> None:
    msg = one_problem(wf(shell("a", "echo {{ params.missing }}"), params={"day": 1}))
    assert msg == "task 'a': command: parameter 'missing' is not declared in the workflow's params"


@pytest.mark.parametrize(
    ("task", "field"),
    [
        (shell("a", env={"X": "{{ params.nope }}"}), "env"),
        ({"name": "a", "type": "python", "function": "m:f", "args": {"x": ["{{ params.nope }}"]}}, "args"),
        (
            {"name": "a", "type": "subworkflow", "workflow": "o", "params": {"x": "{{ params.nope }}"}},
            "params",
        ),
    ],
)
def test_undeclared_param_in_every_templated_field(task: dict[str, Any], field: str) -> None:
    assert one_problem(wf(task)) == (
        f"task 'a': {field}: parameter 'nope' is not declared in the workflow's params"
    )


def test_upstream_must_be_an_ancestor() -> None:
    tasks = [
        shell("a"),
        shell("b", depends_on=["a"]),
        shell("c", "echo {{ upstream.a.x }} {{ upstream.b }}", depends_on=["b"]),  # a is transitive: fine
        shell("d", "echo {{ upstream.c }}"),  # not a dependency
        shell("e", "echo {{ upstream.zz }}", depends_on=["a"]),  # no such task
    ]
    assert problems(wf(*tasks)) == [
        "task 'd': command: 'c' is not an upstream task of 'd'",
        "task 'e': command: 'zz' is not an upstream task of 'e'",
    ]


def test_upstream_downstream_is_not_an_ancestor() -> None:
    msg = one_problem(wf(shell("a", "echo {{ upstream.b }}"), shell("b", depends_on=["a"])))
    assert msg == "task 'a': command: 'b' is not an upstream task of 'a'"


@pytest.mark.parametrize(
    "placeholder", ["{{ foo }}", "{{ params }}", "{{ params.a | upper }}", "{{ env.HOME }}", "{{}}"]
)
def test_unsupported_placeholder(placeholder: str) -> None:
    msg = one_problem(wf(shell("a", f"echo {placeholder}"), params={"a": 1}))
    assert msg.startswith("task 'a': command: unsupported placeholder"), msg


def test_run_placeholders() -> None:
    parse_definition(wf(shell("a", "echo {{ run.id }} {{ run.priority }} {{ run.workflow }}")))
    msg = one_problem(wf(shell("a", "echo {{ run.attempt }}")))
    assert msg == "task 'a': command: 'run.attempt' is not one of run.id/priority/workflow"


# -- several problems at once --------------------------------------------------------------------


def test_several_structural_problems_reported_together() -> None:
    found = problems(
        wf(
            shell("a"),
            shell("a"),
            shell("b", depends_on=["b", "ghost"]),
            {"name": "p", "type": "python", "function": "bad", "command": "x"},
            {"name": "q", "type": "python"},
        )
    )
    assert found == [
        "task 'a': duplicate task name",
        "task 'b': depends on itself",
        "task 'b': depends_on names unknown task 'ghost'",
        "task 'p': 'command' does not apply to a python task",
        "task 'p': function 'bad' is not of the form 'package.module:callable'",
        "task 'q': a python task needs 'function'",
    ]


def test_several_field_problems_reported_together() -> None:
    found = problems(wf(shell("a", retries=-1, priority=10, bogus=True), shell("b", timeout=-5)))
    assert found[0].startswith("task 'a': retries: ")
    assert found[1].startswith("task 'a': priority: ")
    assert found[2].startswith("task 'a': bogus: ")
    assert found[3].startswith("task 'b': timeout: ")
    assert len(found) == 4


def test_several_template_problems_reported_together() -> None:
    found = problems(
        wf(
            shell("a", "echo {{ params.x }} {{ upstream.b }}", env={"Y": "{{ params.y }}"}),
            shell("b", "echo {{ nope }}"),
        )
    )
    assert found == [
        "task 'a': command: parameter 'x' is not declared in the workflow's params",
        "task 'a': command: 'b' is not an upstream task of 'a'",
        "task 'a': env: parameter 'y' is not declared in the workflow's params",
        "task 'b': command: unsupported placeholder '{{ nope }}': use {{ params.NAME }}, "
        "{{ upstream.TASK }}, {{ run.id }} or {{ schedule.time }}",
    ]


# -- digest --------------------------------------------------------------------------------------


def _reordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


def test_digest_is_stable_across_key_order() -> None:
    a = parse_definition(copy.deepcopy(VALID))
    b = parse_definition(_reordered(copy.deepcopy(VALID)))
    assert list(_reordered(VALID)) != list(VALID)
    assert a.digest() == b.digest()
    assert len(a.digest()) == 64
    # defaults spelled out or left implicit: the same workflow
    explicit = copy.deepcopy(VALID)
    explicit["on_failure"] = "stop"
    explicit["tasks"][0]["retries"] = 0
    assert parse_definition(explicit).digest() == a.digest()


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["tasks"][0].update(command="echo changed"),
        lambda d: d["tasks"][1].update(retries=3),
        lambda d: d["params"].update(day="2024-01-02"),
        lambda d: d.update(priority=5),
        lambda d: d.update(description="other"),
        lambda d: d["tasks"][2]["args"].update(extra=1),
    ],
)
def test_digest_changes_when_a_field_changes(change: Any) -> None:
    changed = copy.deepcopy(VALID)
    change(changed)
    assert parse_definition(changed).digest() != parse_definition(copy.deepcopy(VALID)).digest()


# -- run params ----------------------------------------------------------------------------------


def test_check_run_params() -> None:
    spec = parse_definition(copy.deepcopy(VALID))
    assert check_run_params(spec, {}) == {"day": "2024-01-01", "limit": 10}
    assert check_run_params(spec, {"limit": 3}) == {"day": "2024-01-01", "limit": 3}
    with pytest.raises(DefinitionError) as info:
        check_run_params(spec, {"limit": 3, "zeta": 1, "alpha": 2})
    assert info.value.problems == [
        "workflow 'etl': 'alpha' is not a parameter (declared: day, limit)",
        "workflow 'etl': 'zeta' is not a parameter (declared: day, limit)",
    ]


def test_check_run_params_checks_the_types_inferred_from_the_defaults() -> None:
    spec = parse_definition(copy.deepcopy(VALID))
    with pytest.raises(DefinitionError) as info:
        check_run_params(spec, {"limit": "3", "day": 20240101})
    assert info.value.problems == [
        "workflow 'etl': parameter 'limit' (integer): \"3\" is not an integer",
        "workflow 'etl': parameter 'day' (string): 20240101 is not a string",
    ]


def test_check_run_params_without_declared_params() -> None:
    spec = parse_definition(wf(shell("a")))
    with pytest.raises(DefinitionError, match=r"workflow 'w': 'x' is not a parameter \(declared: none\)"):
        check_run_params(spec, {"x": 1})


# -- files ---------------------------------------------------------------------------------------


YAML_TEXT = """\
name: etl
params:
  day: "2024-01-01"
tasks:
  - name: extract
    type: shell
    command: echo {{ params.day }}
  - name: load
    type: python
    function: examples.etl:load
    args:
      rows: "{{ upstream.extract }}"
    depends_on: [extract]
"""


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_load_yaml_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"etl{suffix}"
    path.write_text(YAML_TEXT)
    spec = load_definition_file(path)
    assert [t.name for t in spec.tasks] == ["extract", "load"]
    assert spec.task("load").depends_on == ["extract"]


def test_load_json_file(tmp_path: Path) -> None:
    path = tmp_path / "etl.json"
    path.write_text(json.dumps(VALID))
    assert load_definition_file(str(path)).digest() == parse_definition(copy.deepcopy(VALID)).digest()


def test_yaml_and_json_files_of_the_same_workflow_have_the_same_digest(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "a.yaml").write_text(yaml.safe_dump(VALID))
    (tmp_path / "a.json").write_text(json.dumps(VALID, indent=2))
    assert (
        load_definition_file(tmp_path / "a.yaml").digest()
        == load_definition_file(tmp_path / "a.json").digest()
    )


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [("bad.yaml", "name: [unclosed\n", "YAML"), ("bad.json", '{"name": "w",', "JSON")],
)
def test_load_file_syntax_error(tmp_path: Path, name: str, text: str, kind: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DefinitionError) as info:
        load_definition_file(path)
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert problem.startswith(f"{path}: not valid {kind}")
    assert "\n" not in problem  # one line, with the position
    assert ("line 2, column 1" if kind == "YAML" else "line 1 column 14") in problem


def test_load_file_missing(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="cannot read"):
        load_definition_file(tmp_path / "nope.yaml")


def test_load_file_invalid_definition(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("name: w\ntasks:\n  - name: a\n    type: shell\n")
    with pytest.raises(DefinitionError, match="task 'a': a shell task needs 'command'"):
        load_definition_file(path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(DefinitionError, match="must be a mapping"):
        load_definition_file(empty)



def test_task_lookup_is_built_once():
    """The worker and the master look a task up on every completion: it must not rebuild an O(tasks) map."""
    spec = parse_definition({"name": "big", "tasks": [{"name": f"t{i}", "type": "shell", "command": "true"}
                                                      for i in range(1000)]})
    from app.runtime import LoadedWorkflow

    wf = LoadedWorkflow(1, spec.name, 1, spec)
    assert wf.task("t999") is wf.task("t999") is spec.task("t999")
    assert wf._tasks is wf._tasks
