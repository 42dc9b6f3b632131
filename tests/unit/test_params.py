"""Typed parameters (app/params.py): the two forms of a DAG's ``params:``, types inferred from defaults and from a
code workflow's hints, ``-p`` text conversion and the one check every start goes through."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from app.code.registry import Param, WorkflowDef
from app.definitions import parse_definition
from app.errors import DefinitionError
from app.params import Parameter, check, dag_parameters, from_text, is_spec, parse_text


def views(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    parameters, problems = dag_parameters(params)
    assert problems == []
    return {p.name: p.view() for p in parameters}


def test_short_form_infers_the_type_from_the_default() -> None:
    got = views({"day": "2026-01-01", "n": 3, "ratio": 0.5, "dry": False, "ids": [1], "opts": {"a": 1},
                 "anything": None})
    assert {k: (v["type"], v["default"], v["required"]) for k, v in got.items()} == {
        "day": ("string", "2026-01-01", False), "n": ("integer", 3, False), "ratio": ("number", 0.5, False),
        "dry": ("boolean", False, False), "ids": ("array", [1], False), "opts": ("object", {"a": 1}, False),
        "anything": ("any", None, False)}


def test_written_out_form() -> None:
    got = views({"n": {"type": "integer", "default": 3, "description": "how many"},
                 "who": {"type": "string"},
                 "mode": {"enum": ["fast", "slow"], "default": "fast"},
                 "maybe": {"type": "integer", "required": False}})
    assert got["n"] == {"name": "n", "type": "integer", "default": 3, "required": False, "description": "how many",
                        "enum": None}
    assert got["who"]["required"] is True and got["who"]["default"] is None  # no default: required
    assert got["mode"]["type"] == "string" and got["mode"]["enum"] == ["fast", "slow"]
    assert got["maybe"]["required"] is False


def test_a_mapping_with_other_keys_is_an_object_default() -> None:
    assert is_spec({"type": "integer"}) and not is_spec({}) and not is_spec({"type": "x", "host": "h"})
    got = views({"conn": {"host": "db", "type": "pg"}, "empty": {},
                 "meta": {"type": "object", "default": {"type": "x"}}})
    assert got["conn"]["type"] == "object" and got["conn"]["default"] == {"host": "db", "type": "pg"}
    assert got["empty"]["type"] == "object"
    assert got["meta"]["default"] == {"type": "x"}


@pytest.mark.parametrize(("entry", "problem"), [
    ({"type": "int"}, 'params.p: type "int" is not one of string, integer, number, boolean, array, object, any'),
    ({"type": "integer", "default": "3"}, 'params.p: default "3" is not an integer'),
    ({"type": "integer", "enum": [1, "two"]}, 'params.p: enum value "two" is not an integer'),
    ({"enum": []}, "params.p: enum must be a non-empty list of values"),
    ({"type": "string", "default": "c", "enum": ["a", "b"]}, 'params.p: default "c" is not one of "a", "b"'),
    ({"required": True, "default": 1},
     "params.p: required: true with a default (a required parameter has none: drop one)"),
    ({"description": 3}, "params.p: description must be a string"),
])
def test_a_bad_spec_is_a_definition_problem(entry: dict[str, Any], problem: str) -> None:
    assert dag_parameters({"p": entry})[1] == [problem]
    with pytest.raises(DefinitionError) as info:
        parse_definition({"name": "w", "params": {"p": entry}, "tasks": [{"name": "a", "type": "shell",
                                                                          "command": "true"}]})
    assert info.value.problems == [problem]


def test_text_conversion_by_type() -> None:
    assert from_text(Parameter("v", "string"), "1.10") == "1.10"  # a string keeps the text
    assert from_text(Parameter("v", "string"), "true") == "true"
    assert from_text(Parameter("v", "integer"), " 42 ") == 42
    assert from_text(Parameter("v", "number"), "1.10") == 1.1
    assert from_text(Parameter("v", "number"), "3") == 3
    assert from_text(Parameter("v", "boolean"), "yes") is True
    assert from_text(Parameter("v", "array"), "[1, 2]") == [1, 2]
    assert from_text(Parameter("v", "object"), '{"a": 1}') == {"a": 1}
    assert from_text(Parameter("v", "any"), "123") == 123 and from_text(Parameter("v", "any"), "abc") == "abc"
    assert from_text(Parameter("v", "integer", nullable=True), "null") is None


def test_text_that_does_not_fit_is_one_error_naming_each_parameter() -> None:
    declared = [Parameter("n", "integer"), Parameter("on", "boolean"), Parameter("ids", "array"),
                Parameter("who", "string")]
    with pytest.raises(DefinitionError) as info:
        parse_text("w", declared, {"n": "abc", "on": "maybe", "ids": '{"a": 1}', "who": "x"})
    assert info.value.problems == [
        "workflow 'w': parameter 'n' (integer): 'abc' is not an integer",
        "workflow 'w': parameter 'on' (boolean): 'maybe' is not a boolean (true/false, yes/no, 1/0)",
        "workflow 'w': parameter 'ids' (array): '{\"a\": 1}' is not an array",
    ]


def test_check_merges_defaults_and_checks_values() -> None:
    declared, _ = dag_parameters({"n": {"type": "integer"}, "ratio": 0.5, "mode": {"enum": ["a", "b"],
                                                                                      "default": "a"}})
    assert check("w", declared, {"n": 2}) == {"n": 2, "ratio": 0.5, "mode": "a"}
    assert check("w", declared, {"n": 2.0, "ratio": 1}) == {"n": 2, "ratio": 1, "mode": "a"}
    with pytest.raises(DefinitionError) as info:
        check("w", declared, {"ratio": True, "mode": "c", "x": 1})
    assert info.value.problems == [
        "workflow 'w': 'x' is not a parameter (declared: n, ratio, mode)",
        "workflow 'w': parameter 'n' is required",
        "workflow 'w': parameter 'ratio' (number): true is not a number",
        "workflow 'w': parameter 'mode' (string): \"c\" is not one of \"a\", \"b\"",
    ]
    with pytest.raises(DefinitionError, match=r"parameter 'n' \(integer\): null is not an integer"):
        check("w", declared, {"n": None})


def _code(fn: Any) -> WorkflowDef:
    import inspect

    ps = list(inspect.signature(fn).parameters.values())[1:]
    return WorkflowDef("c", fn, __name__, fn.__qualname__, tuple(
        Param(p.name, p.annotation, p.default is inspect.Parameter.empty,
              None if p.default is inspect.Parameter.empty else p.default) for p in ps))


def _typed(ctx: Any, n: int, who: str = "x", ratio: float = 0.5, on: bool = False, ids: list[int] | None = None,
           opts: dict[str, Any] | None = None, mode: Literal["a", "b"] = "a", free: Any = None,
           either: int | str = 1) -> None:
    """a code workflow's signature"""


def test_code_parameters_come_from_hints_and_defaults() -> None:
    got = {p.name: p.view() for p in _code(_typed).parameters()}
    assert {k: (v["type"], v["default"], v["required"]) for k, v in got.items()} == {
        "n": ("integer", None, True), "who": ("string", "x", False), "ratio": ("number", 0.5, False),
        "on": ("boolean", False, False), "ids": ("array", None, False), "opts": ("object", None, False),
        "mode": ("string", "a", False), "free": ("any", None, False), "either": ("any", 1, False)}
    assert got["mode"]["enum"] == ["a", "b"]


def test_code_values_are_checked_against_the_hints_and_defaults_are_the_functions() -> None:
    wdef = _code(_typed)
    assert wdef.check_params({"n": 1, "ids": None}) == {"n": 1, "ids": None}  # no defaults merged
    with pytest.raises(DefinitionError) as info:
        wdef.check_params({"n": "1", "who": 2, "mode": "c"})
    assert info.value.problems == [
        "workflow 'c': parameter 'n' (integer): \"1\" is not an integer",
        "workflow 'c': parameter 'who' (string): 2 is not a string",
        "workflow 'c': parameter 'mode' (string): \"c\" is not one of \"a\", \"b\"",
    ]


def test_tideflow_pythonpath_goes_first_on_sys_path_in_its_order(tmp_path, monkeypatch) -> None:
    """TIDEFLOW_PYTHONPATH (app/code/registry.py add_pythonpath, called by every process's start through
    load_modules): its directories, absolute, first on sys.path in their order, once each; then the modules
    import from there."""
    import os
    import sys

    from app.code.registry import load_modules

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tf_pythonpath_probe.py").write_text("VALUE = 'from b'\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "b"), *sys.path])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "tf_pythonpath_probe", raising=False)
    load_modules("tf_pythonpath_probe", os.pathsep.join(["a", str(tmp_path / "b"), ""]))
    assert sys.path[:2] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert sys.path.count(str(tmp_path / "b")) == 1
    assert sys.modules["tf_pythonpath_probe"].VALUE == "from b"
