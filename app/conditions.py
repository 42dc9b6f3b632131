"""``when:`` conditions and ``switch`` cases: a small, safe expression language over a run's parameters and its
upstream tasks' results (``params.region == 'eu' and upstream.extract.rows > 0``).

Why Jinja2's sandbox, and how it is narrowed. An expression is parsed and compiled by Jinja2's
``SandboxedEnvironment.compile_expression`` (Pallets' Jinja2: a well-kept library whose sandbox exists to evaluate
untrusted templates; never Python's ``eval``). ``compile_expression`` accepts exactly one expression (no
statements, no ``{% %}``), and the sandbox refuses access to internal attributes (``__class__``, ``_x``...) and
unsafe callables. Jinja's own documentation says the sandbox alone does not bound CPU or memory, so this module
narrows the language further, and the master, which evaluates conditions, cannot be stalled by one:

- no calls at all (``x.format(...)``, ``range(...)``): checked in the parsed expression at registration, and the
  environment has no globals;
- only a list of filters that cost at most linear time in their input (``length``, ``lower``, ``default``,
  ``int``...; not ``center``, ``format``, ``indent``, ``replace``...), and every test (``is defined``, ``is
  none``...);
- the operators that could build a huge value are intercepted (:meth:`_Sandbox.call_binop`): ``*`` repeating a
  list, or a string past :data:`MAX_SIZE`, ``**`` past :data:`MAX_EXPONENT` or :data:`MAX_BITS`, and ``%`` on a
  string (printf formatting) are errors. Without variables or loops, anything else grows at most linearly with the
  expression's length (at most :data:`MAX_LENGTH`) times the size of the data it reads;
- the names are ``params``, ``upstream`` and ``run`` only, each used with an attribute (``params.NAME``,
  ``upstream.TASK[.key]``, ``run.id|priority|workflow``): :func:`references` lists them and registration checks
  each one as it checks placeholders (``app.definitions``: a parameter that is not declared, a task that is not
  upstream: one error, nothing stored);
- undefined values raise (``StrictUndefined``): ``upstream.t.rows`` of an upstream without that key is an error
  (the task fails, saying so), not a silent false. ``upstream.t is defined`` tests whether ``t`` succeeded.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

#: an expression's longest source text
MAX_LENGTH = 2000
#: the longest string or list ``*`` may build
MAX_SIZE = 10_000
#: the largest exponent ``**`` takes, and the largest integer it builds
MAX_EXPONENT = 1000
MAX_BITS = 4096
SCOPES = ("params", "upstream", "run", "schedule")
#: filters whose cost is at most linear (or n log n) in their input's size
SAFE_FILTERS = frozenset({
    "abs", "count", "d", "default", "first", "float", "int", "join", "last", "length", "list", "lower", "max", "min",
    "reject", "rejectattr", "reverse", "round", "select", "selectattr", "sort", "string", "sum", "trim", "unique",
    "upper", "map",
})


class ConditionError(ValueError):
    """An expression that does not parse, or names what it may not; or one that cannot be evaluated."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox (no ``append``/``update`` on values), with the size-building operators
    bounded (``intercepted_binops``/``call_binop`` are the sandbox's documented hooks for this)."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``params.items`` is the parameter named ``items``, never the dict's method: values are JSON data, so
        a mapping's keys are all a dot can reach (Jinja prefers the attribute)."""
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, list | tuple) and isinstance(n, int):  # nested lists would multiply unseen
                    raise ConditionError("'*' repeats strings only, not lists")
                if isinstance(seq, str) and isinstance(n, int) and len(seq) * n > MAX_SIZE:
                    raise ConditionError(f"'*' would build a value longer than {MAX_SIZE}")
            return operator.mul(left, right)
        if op == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise ConditionError(f"'**' takes exponents up to {MAX_EXPONENT}")
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > MAX_BITS:
                raise ConditionError(f"'**' would build a number of more than {MAX_BITS} bits")
            return operator.pow(left, right)
        if isinstance(left, str):
            raise ConditionError("'%' formatting of strings is not supported")
        return operator.mod(left, right)


def _environment() -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=False)
    env.globals.clear()
    env.filters = {name: f for name, f in env.filters.items() if name in SAFE_FILTERS}
    return env


_ENV = _environment()


def _parse(source: str) -> nodes.Expr:
    """The expression's syntax tree, as ``compile_expression`` parses it (exactly one expression)."""
    if not isinstance(source, str) or not source.strip():
        raise ConditionError("an empty expression")
    if len(source) > MAX_LENGTH:
        raise ConditionError(f"longer than {MAX_LENGTH} characters")
    if "{{" in source or "{%" in source:
        raise ConditionError("write the expression itself, without {{ }} or {% %}")
    try:
        parser = Parser(_ENV, source, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            raise ConditionError(f"unexpected '{parser.stream.current.value}' after the expression")
    except TemplateError as exc:
        said = (exc.message or str(exc)).replace("end of template", "end of the expression")
        raise ConditionError(f"invalid expression: {said}") from None
    except RecursionError:
        raise ConditionError("nested too deeply") from None
    return expr


def _path(node: nodes.Node) -> tuple[str, list[str]] | None:
    """``params.a.b`` / ``params['a'].b`` as (scope name, [a, b]); None when the chain does not start at a name or
    a subscript is not a constant (then only the part before it is known)."""
    keys: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            keys.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and isinstance(node.arg.value, str | int):
            keys.append(str(node.arg.value))
            node = node.node
        elif isinstance(node, nodes.Getitem):
            keys.clear()  # a computed key: what follows it is unknown
            node = node.node
        elif isinstance(node, nodes.Name):
            return node.name, list(reversed(keys))
        else:
            return None


def references(source: str) -> list[tuple[str, tuple[str, ...]]]:
    """Every name the expression reads, as (scope, path): ``params.region == 'eu'`` -> ``[("params",
    ("region",))]``. A syntax error, a call, an unknown name or a scope used without an attribute is a
    :class:`ConditionError`."""
    expr = _parse(source)
    everything = [expr, *expr.find_all(nodes.Node)]  # find_all yields the descendants, parents first
    if any(isinstance(node, nodes.Call) for node in everything):
        raise ConditionError("calls are not supported (use filters and tests: x | length, x is defined)")
    found: list[tuple[str, tuple[str, ...]]] = []
    # each chain from its outermost Getattr/Getitem: inner nodes of a chain are skipped
    inner: set[int] = set()
    for node in everything:
        if not isinstance(node, nodes.Getattr | nodes.Getitem | nodes.Name) or id(node) in inner:
            continue
        child: nodes.Node = node
        while isinstance(child, nodes.Getattr | nodes.Getitem):
            child = child.node
            inner.add(id(child))
        resolved = _path(node)
        if resolved is None:
            continue
        scope, path = resolved
        if scope not in SCOPES:
            raise ConditionError(f"unknown name '{scope}' (use params.NAME, upstream.TASK, run.id or schedule.time)")
        if not path:
            raise ConditionError(f"'{scope}' needs a name after it: {scope}.NAME or {scope}['NAME']")
        found.append((scope, tuple(path)))
    try:
        _compiled(source)  # unknown filters and tests are found when compiling
    except TemplateError as exc:
        raise ConditionError(f"invalid expression: {exc.message}") from None
    return found


def upstream_names(source: str) -> list[str]:
    """The upstream tasks whose results the expression reads."""
    return sorted({path[0] for scope, path in references(source) if scope == "upstream"})


@lru_cache(maxsize=4096)
def _compiled(source: str) -> Any:
    return _ENV.compile_expression(source, undefined_to_none=False)


def evaluate(source: str, context: Mapping[str, Any]) -> bool:
    """The truth of the expression with ``context`` (``params``, ``upstream``: results of the upstream tasks that
    succeeded, by name; ``run``). Anything that goes wrong (an undefined value, a type error, a bound exceeded) is a
    :class:`ConditionError` naming the cause."""
    try:
        return bool(_compiled(source)(**{k: context.get(k, {}) for k in SCOPES}))
    except ConditionError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a user's expression is that expression's error
        raise ConditionError(f"{type(exc).__name__}: {exc}") from None


def choose(cases: Sequence[tuple[str, Sequence[str]]], default: Sequence[str],
           context: Mapping[str, Any]) -> tuple[list[str], int | None]:
    """A switch's choice (DolphinScheduler's SWITCH): the ``next`` of the first case whose condition is true, in
    order, and its index; else ``default`` (index None). A condition that cannot be evaluated is a
    :class:`ConditionError` naming its case."""
    for i, (when, nxt) in enumerate(cases):
        try:
            if evaluate(when, context):
                return list(nxt), i
        except ConditionError as exc:
            raise ConditionError(f"case {i + 1} ({when}): {exc}") from None
    return list(default), None
