"""Typed workflow parameters, for both kinds (as Airflow's ``Params``): what a workflow declares, and the one check
of a run's parameters against it (:func:`check`), used by every start: the CLI, the Python client and the REST API
(all of them go through ``app.services.master.create_run``), and ``run start --dry-run``.

A DAG declares ``params:`` as a mapping of name to either

* a default (short form): ``day: "2026-01-01"``; the type is inferred from the default's JSON type (a string, an
  integer, a number, a boolean, an array, an object; ``null``: any type, and the parameter is optional), or
* a spec (written-out form): ``n: {type: integer, default: 3, description: "...", enum: [1, 3, 5]}``. A mapping is
  a spec when it is not empty and every key is one of ``type``, ``default``, ``description``, ``enum``,
  ``required``. A parameter whose default is such a mapping (an object with only those keys) is written out:
  ``opts: {type: object, default: {type: x}}``. A spec without ``default`` is required (``required: false``
  makes it optional with a ``null`` default).

Types: ``string``, ``integer``, ``number``, ``boolean``, ``array``, ``object`` (JSON schema's names) and ``any``.
A code workflow's parameters come from its function's signature: the type from the hint (``str``, ``int``,
``float``, ``bool``, ``list``/``tuple``/``Sequence``, ``dict``/``Mapping``, ``Literal[...]`` as an enum,
``X | None``; anything else is ``any``), required when there is no default.

The CLI's ``-p name=text`` values are converted here too, once, by :func:`parse_text`: a DAG's by its declared
type (:func:`from_text`), a code workflow's by its function's type hint (:class:`HintParameter`,
:func:`from_hint_text`), before :func:`check` checks them as every start's values.
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import math
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import DefinitionError

PARAM_TYPES = ("string", "integer", "number", "boolean", "array", "object", "any")
#: the keys of a written-out parameter (a mapping with only these keys is a spec, not a default)
SPEC_KEYS = frozenset({"type", "default", "description", "enum", "required"})

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_NONE = {"null", "none"}
#: "an integer": how messages name a type
ARTICLE = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean",
            "array": "an array", "object": "an object", "any": "any value"}


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str = "any"
    default: Any = None
    required: bool = False
    description: str = ""
    enum: tuple[Any, ...] | None = None
    #: null is accepted (a default of null, or a ``X | None`` hint)
    nullable: bool = False

    def view(self) -> dict[str, Any]:
        """What the workflow views carry (``parameters``), for the UI's start form."""
        return {"name": self.name, "type": self.type, "default": self.default, "required": self.required,
                "description": self.description, "enum": list(self.enum) if self.enum is not None else None}

    @property
    def label(self) -> str:
        """How a ``-p`` error names the type: ``parameter 'n' (integer)``."""
        return self.type

    def from_text(self, raw: str) -> Any:
        return from_text(self, raw)


class Unfit(ValueError):
    """A value does not fit its parameter (the message says what it takes: "an integer")."""


def json_type(value: Any) -> str:
    """The JSON type of a value (``any`` for null and for what JSON has no type for)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "any"


def is_spec(value: Any) -> bool:
    """Is a DAG's ``params:`` entry written out (``{type: ..., default: ...}``), rather than a default?"""
    return isinstance(value, dict) and bool(value) and set(value) <= SPEC_KEYS


def dag_parameters(params: dict[str, Any]) -> tuple[list[Parameter], list[str]]:
    """A DAG's ``params:`` mapping as parameters, and its problems (each naming ``params.NAME``)."""
    out: list[Parameter] = []
    problems: list[str] = []
    for name, entry in params.items():
        if not is_spec(entry):
            out.append(Parameter(name, json_type(entry), entry, False, "", None, entry is None))
            continue
        where = f"params.{name}"
        ptype = entry.get("type")
        if ptype is not None and ptype not in PARAM_TYPES:
            problems.append(f"{where}: type {json.dumps(ptype)} is not one of {', '.join(PARAM_TYPES)}")
            continue
        description = entry.get("description", "")
        if not isinstance(description, str):
            problems.append(f"{where}: description must be a string")
            continue
        enum = entry.get("enum")
        if enum is not None and (not isinstance(enum, list) or not enum):
            problems.append(f"{where}: enum must be a non-empty list of values")
            continue
        required = entry.get("required")
        if required is not None and not isinstance(required, bool):
            problems.append(f"{where}: required must be true or false")
            continue
        has_default = "default" in entry
        if required and has_default:
            problems.append(f"{where}: required: true with a default (a required parameter has none: drop one)")
            continue
        default = entry.get("default")
        if ptype is None:
            ptype = json_type(default) if has_default and default is not None else (
                json_type(enum[0]) if enum and all(json_type(e) == json_type(enum[0]) for e in enum) else "any")
        p = Parameter(name, ptype, default, not has_default and required is not False, description,
                      tuple(enum) if enum is not None else None, has_default and default is None)
        bad = [e for e in (enum or []) if _fits(Parameter(name, ptype), e) is _NO]
        if bad:
            problems.append(f"{where}: enum value {json.dumps(bad[0])} is not {ARTICLE[ptype]}")
            continue
        if has_default and default is not None:
            try:
                p = Parameter(name, ptype, check_value(p, default), p.required, description, p.enum, p.nullable)
            except Unfit as exc:
                problems.append(f"{where}: default {json.dumps(default)} is not {exc}")
                continue
        out.append(p)
    return out, problems


_NO = object()


def _fits(p: Parameter, value: Any) -> Any:
    """``value`` as ``p``'s type (an integral float becomes an int, as JSON schema counts 3.0 an integer), or
    ``_NO``."""
    t = p.type
    if t == "any":
        return value
    if t == "string":
        return value if isinstance(value, str) else _NO
    if t == "boolean":
        return value if isinstance(value, bool) else _NO
    if t == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return _NO
    if t == "number":
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return value
        return _NO
    if t == "array":
        return list(value) if isinstance(value, list | tuple) else _NO
    if t == "object":
        return value if isinstance(value, dict) else _NO
    return _NO


def check_value(p: Parameter, value: Any) -> Any:
    """``value`` checked against ``p`` (its type, its enum, null only when nullable): the value to store, or
    :class:`Unfit`."""
    if value is None:
        if p.nullable or p.type == "any":
            return None
        raise Unfit(ARTICLE[p.type])
    fitted = _fits(p, value)
    if fitted is _NO:
        raise Unfit(ARTICLE[p.type] + (" or null" if p.nullable else ""))
    if p.enum is not None and fitted not in p.enum:
        raise Unfit(f"one of {', '.join(json.dumps(e) for e in p.enum)}")
    return fitted


# -- ``-p name=text``: the one conversion of text to a parameter's value (a DAG's type or a code workflow's hint) ---


def _loose(raw: str) -> Any:
    """No type to go by: JSON if it parses, else the text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _int_text(raw: str, takes: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise Unfit(takes) from None


def _float_text(raw: str, takes: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise Unfit(takes) from None


def _bool_text(raw: str, takes: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise Unfit(f"{takes} (true/false, yes/no, 1/0)")


def _is_null_text(raw: str) -> bool:
    return raw.strip().lower() in _NONE


def from_text(p: Parameter, raw: str) -> Any:
    """``raw`` (a ``-p name=text`` value) as ``p``'s type: a string stays the text (``1.10`` is not ``1.1``); an
    ``any`` takes JSON if it parses, else the text. :class:`Unfit` when it does not fit."""
    t = p.type
    if p.nullable and t != "string" and _is_null_text(raw):
        return None
    if t == "string":
        value: Any = raw
    elif t == "integer":
        value = _int_text(raw, ARTICLE[t])
    elif t == "number":
        try:
            value = _int_text(raw, ARTICLE[t])
        except Unfit:
            value = _float_text(raw, ARTICLE[t])
    elif t == "boolean":
        value = _bool_text(raw, "a boolean")
    elif t == "any":
        value = _loose(raw)
    else:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise Unfit(f"JSON of {ARTICLE[t]}") from None
    return check_value(p, value)


def hint_name(hint: Any) -> str:
    """How a ``-p`` error names a type hint: ``int``, ``dict[str, int]``, ``Optional[int]``."""
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _json_of(raw: str, kind: type, hint: Any) -> Any:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise Unfit(f"JSON of a {hint_name(hint)}") from None
    if not isinstance(value, kind) or (kind is collections.abc.Sequence and isinstance(value, str)):
        raise Unfit(f"JSON of a {hint_name(hint)}")
    return value


def from_hint_text(hint: Any, raw: str) -> Any:
    """``raw`` (a ``-p name=text`` value of a code workflow) as a value of the type hint ``hint``: ``str``,
    ``int``, ``float``, ``bool``, ``dict``/``list`` (and ``dict[...]``/``list[...]``, ``Mapping``/``Sequence``,
    ``tuple``: JSON of that shape; the items are not checked), ``Any``, ``Literal[...]``, unions (``Optional[X]``,
    ``X | None``: ``null``/``none`` is None; else the first member the value fits). No hint, or one this does not
    know (a class, a TypedDict, an annotation that did not resolve): JSON if it parses, else the text, like an
    ``any`` parameter. :class:`Unfit` when it does not fit (the values are then checked, as every start's are, by
    :func:`check`)."""
    if hint is inspect.Parameter.empty or hint is Any or hint is object or isinstance(hint, str):
        return _loose(raw)  # a str hint: an annotation that could not be resolved
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        members = typing.get_args(hint)
        if type(None) in members and _is_null_text(raw):
            return None
        takes: list[str] = []
        for member in members:
            if member is type(None):
                continue
            try:
                return from_hint_text(member, raw)
            except Unfit as exc:
                takes.append(str(exc))
        raise Unfit(" or ".join(takes + (["null"] if type(None) in members else [])))
    if origin is typing.Literal:
        for choice in typing.get_args(hint):
            try:
                value = from_hint_text(type(choice), raw)
            except Unfit:
                continue
            if value == choice:
                return choice
        raise Unfit(f"one of {', '.join(json.dumps(c) for c in typing.get_args(hint))}")
    if hint is type(None):
        if _is_null_text(raw):
            return None
        raise Unfit("null")
    if hint is bool:
        return _bool_text(raw, "a bool")
    if hint is int:
        return _int_text(raw, "an int")
    if hint is float:
        number = _float_text(raw, "a float")
        if not math.isfinite(number):
            raise Unfit("a finite float (JSON has no nan or infinity)")
        return number
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


@dataclass(frozen=True)
class HintParameter:
    """A code workflow's parameter as ``-p`` text converts it: by its function's type hint
    (:func:`from_hint_text`; ``inspect.Parameter.empty`` when there is none)."""

    name: str
    hint: Any = inspect.Parameter.empty

    @property
    def label(self) -> str:
        """How a ``-p`` error names the type: ``parameter 'n' (int)``."""
        return hint_name(self.hint)

    def from_text(self, raw: str) -> Any:
        return from_hint_text(self.hint, raw)


def hint_parameters(fn: Any, annotations: dict[str, Any], names: Iterable[str]) -> list[HintParameter]:
    """The ``-p`` names of a code workflow ``fn`` whose parameters are ``annotations`` (name -> annotation), typed by
    the resolved hints (a hint that does not resolve stays a string: no hint). A name that is not a parameter has
    no hint (the start reports it, with the declared names)."""
    resolved = _type_hints(fn) if annotations else {}
    return [HintParameter(n, resolved.get(n, annotations[n]) if n in annotations else inspect.Parameter.empty)
            for n in names]


def parse_text(workflow: str, parameters: Sequence[Parameter | HintParameter], raw: dict[str, str]
               ) -> dict[str, Any]:
    """``-p`` values (``name -> text``) converted by the declared types (a DAG's :class:`Parameter`, a code
    workflow's :class:`HintParameter`), every misfit in one error. A name that is not declared is passed on as text
    (:func:`check` reports it, with the declared names)."""
    by_name = {p.name: p for p in parameters}
    out: dict[str, Any] = {}
    problems: list[str] = []
    for name, text in raw.items():
        p = by_name.get(name)
        if p is None:
            out[name] = text
            continue
        try:
            out[name] = p.from_text(text)
        except Unfit as exc:
            problems.append(f"workflow '{workflow}': parameter '{name}' ({p.label}): {text!r} is not {exc}")
    if problems:
        raise DefinitionError(problems)
    return out


def check(workflow: str, parameters: list[Parameter], values: dict[str, Any], *, merge_defaults: bool = True
          ) -> dict[str, Any]:
    """THE check of a run's parameters (every start, every kind): no undeclared name, every required one given,
    each value of its declared type, the whole JSON. Returns the values to store: over the declared defaults
    when ``merge_defaults`` (a DAG's; a code workflow's function applies its own). All problems in one
    :class:`DefinitionError`; nothing is stored."""
    by_name = {p.name: p for p in parameters}
    declared = ", ".join(p.name for p in parameters) or "none"
    problems = [f"workflow '{workflow}': '{k}' is not a parameter (declared: {declared})"
                for k in sorted(set(values) - set(by_name))]
    problems += [f"workflow '{workflow}': parameter '{p.name}' is required" for p in parameters
                 if p.required and p.name not in values]
    out: dict[str, Any] = {p.name: p.default for p in parameters if not p.required} if merge_defaults else {}
    for name, value in values.items():
        p = by_name.get(name)
        if p is None:
            continue
        try:
            out[name] = check_value(p, value)
        except Unfit as exc:
            problems.append(f"workflow '{workflow}': parameter '{name}' ({p.type}): {_show(value)} is not {exc}")
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"workflow '{workflow}': parameters must be JSON ({exc})")
    if problems:
        raise DefinitionError(problems)
    return out


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- code workflows: a function's signature -----------------------------------------------------------------------


def hint_parameter(name: str, hint: Any, required: bool, default: Any) -> Parameter:
    """A code workflow's parameter from its (resolved) type hint and default."""
    nullable = not required and default is None
    ptype, enum = "any", None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        members = [m for m in typing.get_args(hint) if m is not type(None)]
        if len(members) < len(typing.get_args(hint)):
            nullable = True
        hint = members[0] if len(members) == 1 else Any
        origin = typing.get_origin(hint)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        kinds = {json_type(c) for c in choices}
        ptype = kinds.pop() if len(kinds) == 1 else "any"
        enum = tuple(choices)
    else:
        ptype = _hint_type(origin or hint)
    shown = default if not required else None
    try:
        json.dumps(shown, allow_nan=False)
    except (TypeError, ValueError):
        shown = repr(shown)  # shown only: the function applies its own default
    if isinstance(shown, tuple):
        shown = list(shown)
    return Parameter(name, ptype, shown, required, "", enum, nullable)


def _hint_type(hint: Any) -> str:
    if hint is bool:
        return "boolean"
    if hint is int:
        return "integer"
    if hint is float:
        return "number"
    if hint is str:
        return "string"
    if hint in (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence):
        return "array"
    if hint in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return "object"
    return "any"  # no hint (inspect.Parameter.empty), Any, an unresolved string, a class, a TypedDict ...


def signature_parameters(fn: Any, names: list[tuple[str, bool, Any]]) -> list[Parameter]:
    """``fn``'s parameters ``(name, required, default)`` typed by its resolved hints (a module with ``from
    __future__ import annotations`` stores them as strings; one that does not resolve is ``any``)."""
    resolved = _type_hints(fn)  # none resolves when one does not: no type for any of them
    return [hint_parameter(n, resolved.get(n, inspect.Parameter.empty), req, d) for n, req, d in names]


def _type_hints(fn: Any) -> dict[str, Any]:
    """``fn``'s type hints, resolved (``{}`` when a forward reference does not resolve)."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - a forward reference that does not resolve
        return {}
