"""Placeholder substitution: dotted lookups only, typed single placeholders, shell quoting."""

from __future__ import annotations

import shlex
import subprocess
from typing import Any

import pytest

from app.templating import TemplateError, references, render, render_shell

CTX: dict[str, Any] = {
    "params": {
        "day": "2024-01-01",
        "n": 3,
        "cfg": {"b": [1, "x"], "a": True},
        "none": None,
        "dash-name": "d",
    },
    "upstream": {"extract": {"rows": 40, "files": ["a.csv", "b.csv"]}, "plain": "text"},
    "run": {"id": 7, "priority": 5, "workflow": "wf"},
}


def test_references_walks_strings_lists_and_dicts() -> None:
    value = {
        "a": "x {{ params.day }} {{upstream.extract.rows}}",
        "b": ["{{ run.id }}", {"c": "{{ params.cfg.b.0 }}"}],
        "n": 1,
        "none": None,
    }
    assert references(value) == [
        ("params", ("day",)),
        ("upstream", ("extract", "rows")),
        ("run", ("id",)),
        ("params", ("cfg", "b", "0")),
    ]
    assert references("no placeholders { here }") == []
    assert references(42) == []


@pytest.mark.parametrize(
    "text",
    [
        "{{ foo }}",
        "{{ params }}",
        "{{ params. }}",
        "{{ params.a | upper }}",
        "{{ params['a'] }}",
        "{{ }}",
        "{{ env.X }}",
    ],
)
def test_references_rejects_anything_but_dotted_lookups(text: str) -> None:
    with pytest.raises(TemplateError, match="unsupported placeholder"):
        references(f"echo {text}")


def test_single_placeholder_keeps_json_type() -> None:
    assert render("{{ params.n }}", CTX) == 3
    assert render("  {{params.cfg}}", CTX) == "  " + '{"a": true, "b": [1, "x"]}'
    assert render("{{ params.cfg }}", CTX) == {"b": [1, "x"], "a": True}
    assert render("{{ params.none }}", CTX) is None
    assert render("{{ upstream.extract.files.1 }}", CTX) == "b.csv"
    assert render("{{ params.dash-name }}", CTX) == "d"


def test_interpolation_makes_text() -> None:
    assert render("day={{ params.day }} n={{ params.n }} run={{ run.id }}", CTX) == "day=2024-01-01 n=3 run=7"
    assert render("{{ params.n }}{{ params.n }}", CTX) == "33"
    assert render("{{ params.cfg }}!", CTX) == '{"a": true, "b": [1, "x"]}!'
    assert render("{{ params.none }}.", CTX) == "null."


def test_render_recurses_and_leaves_other_values_alone() -> None:
    value = {
        "a": ["{{ params.n }}", 2, None, {"b": "{{ upstream.plain }}"}],
        "c": False,
        "d": ("{{ run.id }}",),
    }
    assert render(value, CTX) == {"a": [3, 2, None, {"b": "text"}], "c": False, "d": [7]}
    assert render("plain { text }", CTX) == "plain { text }"


@pytest.mark.parametrize(
    "text",
    [
        "{{ params.missing }}",
        "{{ upstream.extract.nope }}",
        "{{ upstream.extract.files.5 }}",
        "{{ params.day.x }}",
        "x {{ upstream.gone }}",
    ],
)
def test_missing_values_are_errors(text: str) -> None:
    with pytest.raises(TemplateError, match="has no value"):
        render(text, CTX)


def test_unsupported_placeholder_in_render() -> None:
    with pytest.raises(TemplateError, match="unsupported placeholder"):
        render("x {{ nope }}", CTX)


def test_render_does_not_reinterpret_substituted_text() -> None:
    ctx = {"params": {"a": "{{ params.b }}", "b": "secret"}}
    assert render("x {{ params.a }}", ctx) == "x {{ params.b }}"
    assert render("{{ params.a }}", ctx) == "{{ params.b }}"


@pytest.mark.parametrize(
    "value",
    [
        '"; touch /tmp/pwned; echo "',
        "it's",
        "$(id)",
        "`id`",
        "a b\tc\nd",
        "",
        "*",
        "~",
        "-n",
        "\\",
        "${HOME}",
    ],
)
def test_render_shell_quotes_every_value(value: str) -> None:
    command = render_shell("printf '%s|' {{ params.v }} x{{ params.v }}y", {"params": {"v": value}})
    assert command == f"printf '%s|' {shlex.quote(value)} x{shlex.quote(value)}y"
    out = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=True).stdout
    assert out == f"{value}|x{value}y|"


def test_render_shell_quotes_json_values_too() -> None:
    command = render_shell("echo {{ params.cfg }} {{ params.n }} {{ run.id }}", CTX)
    assert command == """echo '{"a": true, "b": [1, "x"]}' 3 7"""


def test_render_shell_without_placeholders_is_unchanged() -> None:
    assert render_shell("echo 'hi' && ls | wc -l", CTX) == "echo 'hi' && ls | wc -l"


def test_args_is_a_scope_only_where_a_caller_allows_it() -> None:
    """``{{ args.NAME }}`` (an activity's concurrency key) is not a DAG placeholder; its callers pass the scopes."""
    from app.templating import ACTIVITY_KEY_SCOPES

    with pytest.raises(TemplateError, match=r"unsupported placeholder '\{\{ args.x \}\}': use \{\{ params.NAME"):
        references("{{ args.x }}")
    with pytest.raises(TemplateError, match="unsupported placeholder"):
        render("k-{{ args.x }}", {"args": {"x": 1}})
    assert references("k-{{ args.x.y }}-{{ params.p }}", ACTIVITY_KEY_SCOPES) == [
        ("args", ("x", "y")), ("params", ("p",))]
    with pytest.raises(TemplateError, match=r"use \{\{ args.NAME \}\} or \{\{ params.NAME \}\}$"):
        references("{{ run.id }}", ACTIVITY_KEY_SCOPES)
    ctx = {"args": {"x": {"y": 42}}, "params": {"p": "eu"}}
    assert render("k-{{ args.x.y }}-{{ params.p }}", ctx, scopes=ACTIVITY_KEY_SCOPES) == "k-42-eu"
    assert render("{{ args.x.y }}", ctx, scopes=ACTIVITY_KEY_SCOPES) == 42
