"""``{{ params.x }}`` / ``{{ upstream.task.key }}`` / ``{{ run.id }}`` / ``{{ schedule.time }}`` substitution.

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
#: the scopes a placeholder may name (``schedule``: the run's logical time, :func:`schedule_scope`)
_REF = re.compile(r"^\s*(params|upstream|run|schedule)((?:\.[A-Za-z0-9_\-]+)+)\s*$")

_MISSING = object()


class TemplateError(ValueError):
    pass


def references(value: Any) -> list[tuple[str, tuple[str, ...]]]:
    """Every placeholder in ``value`` (strings, lists and dicts, recursively) as (scope, path)."""
    found: list[tuple[str, tuple[str, ...]]] = []
    for text in _strings(value):
        for m in _ANY.finditer(text):
            ref = _REF.match(m.group(1))
            if ref is None:
                raise TemplateError(
                    f"unsupported placeholder '{{{{{m.group(1)}}}}}': use {{{{ params.NAME }}}}, "
                    "{{ upstream.TASK }}, {{ run.id }} or {{ schedule.time }}"
                )
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


def render(value: Any, context: Mapping[str, Any], quote: Callable[[str], str] | None = None) -> Any:
    """Substitute placeholders in ``value``. A string that is a single placeholder keeps the JSON type."""
    if isinstance(value, Mapping):
        return {k: render(v, context, quote) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render(v, context, quote) for v in value]
    if not isinstance(value, str):
        return value
    whole = _ANY.fullmatch(value)
    if whole and quote is None:
        ref = _REF.match(whole.group(1))
        if ref:
            return _lookup(context, ref.group(1), tuple(ref.group(2)[1:].split(".")))

    def sub(m: re.Match[str]) -> str:
        ref = _REF.match(m.group(1))
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
