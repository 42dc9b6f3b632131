"""Text to a code workflow's parameters: ``tideflow run start NAME -p k=v`` converts each value by the type hint of
the function's parameter ``k`` (:class:`~app.code.registry.Param`). A parameter without a hint (or with a hint
this does not know, e.g. a class) takes the value as JSON if it parses, else as a string, like an untyped DAG
parameter (:func:`app.params.from_text`). A value that does not fit its hint is a
:class:`~app.errors.DefinitionError` naming the parameter (nothing is started). This converts text only: the values
are then checked, as every start's are, by :func:`app.params.check` (the types :func:`app.params.hint_parameter`
reads from the same hints).

Hints understood: ``str``, ``int``, ``float``, ``bool``, ``dict``/``list`` (and ``dict[...]``/``list[...]``,
``Mapping``/``Sequence``: JSON of that shape; the items are not checked), ``Any``, ``Literal[...]``, unions
(``Optional[X]``, ``X | None``: ``null``/``none`` is None; else the first member the value fits).
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import math
import types
import typing
from typing import Any

from app.code.registry import WorkflowDef
from app.errors import DefinitionError

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_NONE = {"null", "none"}


class _Unfit(ValueError):
    """The text does not fit the hint (the message says what the hint takes: "an int")."""


def _loose(raw: str) -> Any:
    """No usable hint: JSON if it parses, else the string (today's DAG behaviour)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _hint_name(hint: Any) -> str:
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _json_of(raw: str, kind: type, hint: Any) -> Any:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise _Unfit(f"JSON of a {_hint_name(hint)}") from None
    if not isinstance(value, kind) or (kind is collections.abc.Sequence and isinstance(value, str)):
        raise _Unfit(f"JSON of a {_hint_name(hint)}")
    return value


def convert(raw: str, hint: Any) -> Any:
    """``raw`` as a value of ``hint`` (:class:`_Unfit` when it does not fit)."""
    if hint is inspect.Parameter.empty or hint is Any or hint is object or isinstance(hint, str):
        return _loose(raw)  # a str hint: an annotation that could not be resolved
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        members = typing.get_args(hint)
        if type(None) in members and raw.strip().lower() in _NONE:
            return None
        takes: list[str] = []
        for member in members:
            if member is type(None):
                continue
            try:
                return convert(raw, member)
            except _Unfit as exc:
                takes.append(str(exc))
        raise _Unfit(" or ".join(takes + (["null"] if type(None) in members else [])))
    if origin is typing.Literal:
        for choice in typing.get_args(hint):
            try:
                value = convert(raw, type(choice))
            except _Unfit:
                continue
            if value == choice:
                return choice
        raise _Unfit(f"one of {', '.join(json.dumps(c) for c in typing.get_args(hint))}")
    if hint is type(None):
        if raw.strip().lower() in _NONE:
            return None
        raise _Unfit("null")
    if hint is bool:
        word = raw.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise _Unfit("a bool (true/false, yes/no, 1/0)")
    if hint is int:
        try:
            return int(raw.strip())
        except ValueError:
            raise _Unfit("an int") from None
    if hint is float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise _Unfit("a float") from None
        if not math.isfinite(value):
            raise _Unfit("a finite float (JSON has no nan or infinity)")
        return value
    if hint is str:
        return raw
    container = origin or hint
    if container in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return _json_of(raw, dict, hint)
    if container in (list, collections.abc.Sequence, collections.abc.MutableSequence):
        return _json_of(raw, list if container is list else collections.abc.Sequence, hint)
    if container is tuple:
        return _json_of(raw, list, hint)  # JSON has arrays; the function receives a list
    return _loose(raw)  # a hint this does not know (a class, a TypedDict, ...): as if there were none


def hints(wf: WorkflowDef) -> dict[str, Any]:
    """The parameters' type hints, resolved (a module with ``from __future__ import annotations`` stores them as
    strings); a hint that does not resolve stays a string, which :func:`convert` treats as no hint."""
    try:
        resolved = typing.get_type_hints(wf.fn)
    except Exception:  # noqa: BLE001 - a forward reference that does not resolve: use what the signature has
        resolved = {}
    return {p.name: resolved.get(p.name, p.annotation) for p in wf.params}


def parse_params(wf: WorkflowDef, raw: dict[str, str]) -> dict[str, Any]:
    """``raw`` (``name -> text``) converted by ``wf``'s hints; every value that does not fit in one error. A name
    that is not a parameter is passed on loosely (the start reports it, with the declared names)."""
    types_ = hints(wf)
    out: dict[str, Any] = {}
    problems: list[str] = []
    for name, text in raw.items():
        hint = types_.get(name, inspect.Parameter.empty)
        try:
            out[name] = convert(text, hint)
        except _Unfit as exc:
            problems.append(f"workflow '{wf.name}': parameter '{name}' ({_hint_name(hint)}): {text!r} is not {exc}")
    if problems:
        raise DefinitionError(problems)
    return out
