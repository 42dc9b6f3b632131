"""``{{ params.x }}`` / ``{{ upstream.task.key }}`` / ``{{ run.id }}`` / ``{{ schedule.time }}`` substitution (and
``{{ args.x }}`` in an activity's concurrency key: the scopes a caller allows are its ``scopes``).

Deliberately not Jinja: a placeholder is a dotted lookup and nothing else, so parameters can only ever be
data. In shell commands every substituted value is ``shlex.quote``-d (do not quote placeholders yourself).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

_ANY = re.compile(r"\{\{(.*?)\}\}", re.S)
#: the scopes a DAG's placeholder may name (``schedule``: the run's logical time, :func:`schedule_scope`)
DAG_SCOPES = ("params", "upstream", "run", "schedule")
#: an activity's concurrency key (``@tideflow.activity(concurrency=...)``): its bound arguments and the run's params
ACTIVITY_KEY_SCOPES = ("args", "params")
_REF_ANY = re.compile(r"^\s*([a-z]+)((?:\.[A-Za-z0-9_\-]+)+)\s*$")
_HINTS = {"params": "{{ params.NAME }}", "upstream": "{{ upstream.TASK }}", "run": "{{ run.id }}",
          "schedule": "{{ schedule.time }}", "args": "{{ args.NAME }}"}

_MISSING = object()


class TemplateError(ValueError):
    pass


def _ref(text: str, scopes: tuple[str, ...]) -> re.Match[str] | None:
    """The placeholder ``{{ text }}`` as (scope, path) groups, if it is a dotted lookup in one of ``scopes``."""
    ref = _REF_ANY.match(text)
    return ref if ref is not None and ref.group(1) in scopes else None


def references(value: Any, scopes: tuple[str, ...] = DAG_SCOPES) -> list[tuple[str, tuple[str, ...]]]:
    """Every placeholder in ``value`` (strings, lists and dicts, recursively) as (scope, path); a placeholder that
    is not a dotted lookup in one of ``scopes`` is a :class:`TemplateError`."""
    found: list[tuple[str, tuple[str, ...]]] = []
    for text in _strings(value):
        for m in _ANY.finditer(text):
            ref = _ref(m.group(1), scopes)
            if ref is None:
                hints = [_HINTS[s] for s in scopes]
                use = hints[0] if len(hints) == 1 else ", ".join(hints[:-1]) + " or " + hints[-1]
                raise TemplateError(f"unsupported placeholder '{{{{{m.group(1)}}}}}': use {use}")
            found.append((ref.group(1), tuple(ref.group(2)[1:].split("."))))
    return found


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def _lookup(context: Mapping[str, Any], scope: str, path: tuple[str, ...]) -> Any:
    cur: Any = context.get(scope, _MISSING)
    for key in path:
        if isinstance(cur, Mapping) and key in cur:
            cur = cur[key]
        elif isinstance(cur, list) and key.isdigit() and int(key) < len(cur):
            cur = cur[int(key)]
        else:
            raise TemplateError(f"'{scope}.{'.'.join(path)}' has no value")
    return cur


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def render(
    value: Any, context: Mapping[str, Any], quote: Callable[[str], str] | None = None,
    scopes: tuple[str, ...] = DAG_SCOPES,
) -> Any:
    """Substitute placeholders in ``value``. A string that is a single placeholder keeps the JSON type."""
    if isinstance(value, Mapping):
        return {k: render(v, context, quote, scopes) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render(v, context, quote, scopes) for v in value]
    if not isinstance(value, str):
        return value
    whole = _ANY.fullmatch(value)
    if whole and quote is None:
        ref = _ref(whole.group(1), scopes)
        if ref:
            return _lookup(context, ref.group(1), tuple(ref.group(2)[1:].split(".")))

    def sub(m: re.Match[str]) -> str:
        ref = _ref(m.group(1), scopes)
        if ref is None:
            raise TemplateError(f"unsupported placeholder '{m.group(0)}'")
        text = _as_text(_lookup(context, ref.group(1), tuple(ref.group(2)[1:].split("."))))
        return quote(text) if quote else text

    return _ANY.sub(sub, value)


def schedule_scope(schedule_name: str | None, schedule_time: datetime | None,
                   created_at: datetime | None) -> dict[str, Any]:
    """``{{ schedule.time }}`` (ISO 8601, UTC) and ``{{ schedule.name }}``: the fire time a schedule started the run
    for (its logical time: a rerun or a backfill processes that time, not today); a run started by hand has its start
    time (Airflow's logical date of a manual run) and no name (empty)."""
    when = schedule_time or created_at
    return {"time": when.isoformat() if when is not None else "", "name": schedule_name or ""}


def render_shell(command: str, context: Mapping[str, Any]) -> str:
    return str(render(command, context, quote=shlex.quote))
