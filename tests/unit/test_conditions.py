"""``when:`` conditions and ``switch`` cases: the expression language (app/conditions.py) and its checks at
registration (app/definitions.py): one-line errors, nothing else accepted."""

from __future__ import annotations

import copy

import pytest

from app import conditions
from app.conditions import ConditionError, choose, evaluate, references
from app.definitions import parse_definition
from app.errors import DefinitionError

CTX = {"params": {"region": "eu", "limit": 10, "items": 3, "tags": ["a", "b"]},
       "upstream": {"extract": {"rows": 42, "name": "x"}, "count": 7},
       "run": {"id": 5, "priority": 5, "workflow": "w"}}


@pytest.mark.parametrize(("source", "want"), [
    ("params.region == 'eu'", True),
    ("params.region == 'us'", False),
    ("params.region == 'eu' and upstream.extract.rows > 40", True),
    ("upstream.count >= params.limit", False),
    ("'b' in params.tags and params.tags | length == 2", True),
    ("params['region'] != 'eu' or not (run.id > 3)", False),
    ("params.items == 3", True),  # a parameter named like a dict method is the parameter
    ("upstream.missing is defined", False),
    ("upstream.missing is not defined or upstream.missing.rows > 1", True),
    ("params.region | upper == 'EU'", True),
    ("upstream.extract.name[:1] == 'x'", True),
])
def test_evaluate(source, want):
    references(source)  # every expression here is valid at registration
    assert evaluate(source, CTX) is want


@pytest.mark.parametrize(("source", "error"), [
    ("upstream.missing.rows > 1", "UndefinedError"),  # undefined is an error, never a silent false
    ("params.region > 1", "TypeError"),
    ("'a' * 100000 == ''", "longer than 10000"),
    ("2 ** 100000 > 1", "exponents up to 1000"),
    ("((9 ** 1000) ** 1000) ** 1000 > 1", "more than 4096 bits"),
    ("[[1] * 1] * 10 == []", "repeats strings only"),
    ("'%s' % params.region == ''", "formatting of strings"),
    ("params.region.__class__ == 1", "unsafe"),
    ("1 / 0 > 1", "ZeroDivisionError"),
])
def test_evaluation_errors_say_why(source, error):
    with pytest.raises(ConditionError, match=error):
        evaluate(source, CTX)


@pytest.mark.parametrize(("source", "error"), [
    ("params.region ==", "invalid expression: unexpected 'end of the expression'"),
    ("params.region == 'eu' params.x", "after the expression"),
    ("region == 'eu'", "unknown name 'region'"),
    ("params == {}", "'params' needs a name after it"),
    ("range(10) | length > 1", "calls are not supported"),
    ("params.region.startswith('e')", "calls are not supported"),
    ("params.region | center(1000000000) == ''", "No filter named 'center'"),
    ("{{ params.region == 'eu' }}", "without {{ }}"),
    ("", "empty"),
    ("params.a == " + "1 + " * 600 + "1", "longer than 2000"),
])
def test_invalid_expressions_are_refused(source, error):
    with pytest.raises(ConditionError, match=error):
        references(source)


def test_references_name_scopes_and_paths():
    assert references("params.region == 'eu' and upstream.extract['rows'] > run.id") == [
        ("params", ("region",)), ("upstream", ("extract", "rows")), ("run", ("id",))]
    assert conditions.upstream_names("upstream.b.x > 1 or upstream.a > upstream.b.y") == ["a", "b"]


def test_choose_takes_the_first_case_that_holds_else_the_default():
    cases = [("params.region == 'us'", ["us"]), ("params.limit > 5", ["big"]), ("params.limit > 1", ["small"])]
    assert choose(cases, ["other"], CTX) == (["big"], 1)
    assert choose(cases[:1], ["other"], CTX) == (["other"], None)
    assert choose(cases[:1], [], CTX) == ([], None)
    with pytest.raises(ConditionError, match=r"case 1 \(upstream.nope.x > 1\): UndefinedError"):
        choose([("upstream.nope.x > 1", ["a"])], [], CTX)


# -- registration ----------------------------------------------------------------------------------------------

BRANCHY = {
    "name": "branchy",
    "params": {"region": "eu"},
    "tasks": [
        {"name": "extract", "type": "shell", "command": "echo 1"},
        {"name": "route", "type": "switch", "depends_on": ["extract"], "default": "other",
         "cases": [{"when": "params.region == 'eu'", "next": "eu"},
                   {"when": "upstream.extract == '2'", "next": ["us"]}]},
        {"name": "eu", "type": "shell", "command": "echo eu", "depends_on": ["route"]},
        {"name": "us", "type": "shell", "command": "echo us", "depends_on": ["route"]},
        {"name": "other", "type": "shell", "command": "echo other", "depends_on": ["route"]},
        {"name": "report", "type": "shell", "command": "echo r", "depends_on": ["eu", "us", "other"],
         "trigger_rule": "none_failed", "when": "upstream.extract | int > 0"},
    ],
}


def test_a_branching_definition_is_valid_and_keeps_what_it_says():
    spec = parse_definition(BRANCHY)
    assert spec.task("route").branches() == [("params.region == 'eu'", ["eu"]), ("upstream.extract == '2'", ["us"])]
    assert spec.task("route").default_branch() == ["other"]
    assert spec.task("report").trigger_rule == "none_failed"
    # a definition that does not branch keeps its canonical form (and digest): no new keys appear
    plain = parse_definition({"name": "p", "tasks": [{"name": "a", "type": "shell", "command": "echo"}]})
    assert plain.canonical()["tasks"][0].keys().isdisjoint({"trigger_rule", "when", "cases", "default"})


def _problems(change) -> str:
    d = copy.deepcopy(BRANCHY)
    change({t["name"]: t for t in d["tasks"]})
    with pytest.raises(DefinitionError) as info:
        parse_definition(d)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(("change", "error"), [
    (lambda t: t["report"].update(when="params.day == 1"),
     "task 'report': when: parameter 'day' is not declared in the workflow's params"),
    (lambda t: t["eu"].update(when="upstream.us == 1"), "task 'eu': when: 'us' is not an upstream task of 'eu'"),
    (lambda t: t["report"].update(when="params.region =="),
     "task 'report': when: params.region ==: invalid expression: unexpected 'end of the expression'"),
    (lambda t: t["report"].update(when="region == 'eu'"), "task 'report': when: region == 'eu': unknown name"),
    (lambda t: t["report"].update(trigger_rule="sometimes"), "task 'report': trigger_rule: Input should be"),
    (lambda t: t["route"]["cases"][0].update(when="run.day == 1"),
     "task 'route': cases[0].when: 'run.day' is not one of run.id/priority/workflow"),
    (lambda t: t["route"].update(default="report"),
     "task 'route': branch 'report' is not a task that depends on 'route' (add 'route' to its depends_on)"),
    (lambda t: t["route"].pop("default"),
     "task 'route': task 'other' depends on the switch but is none of its branches"),
    (lambda t: t["route"].pop("cases"), "task 'route': a switch task needs 'cases'"),
    (lambda t: t["route"].update(retries=2), "do not apply to a switch task"),
    (lambda t: t["route"].update(command="echo"), "task 'route': 'command' does not apply to a switch task"),
    (lambda t: t["eu"].update(cases=[{"when": "true", "next": "x"}]), "'cases' does not apply to a shell task"),
    (lambda t: t["route"].update(cases=[]), "task 'route': cases: List should have at least 1 item"),
])
def test_bad_branching_is_one_line_and_names_the_task(change, error):
    assert error in _problems(change)
