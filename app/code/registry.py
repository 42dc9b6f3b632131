"""The registry of code workflows and activities: what ``@tideflow.workflow`` and ``@tideflow.activity`` record
when users' modules are imported (each process imports the modules named by ``TIDEFLOW_WORKFLOW_MODULES``, see
:func:`load_modules`).

A run names its workflow, and an activity step its activity, by *registered name*: parameters never choose which
code runs (a name that is not registered is a clear error, never an import of whatever a caller wrote).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload

from pydantic import ValidationError

from app import templating
from app.definitions import NAME_RE, POOL_RE, RATE_RE, ConcurrencySpec
from app.errors import DefinitionError, TideflowError
from app.params import Parameter as TypedParameter
from app.params import check, signature_parameters
from app.scheduling import ScheduleSpec, parse_schedules

F = TypeVar("F", bound=Callable[..., Any])

NAME_PATTERN = re.compile(NAME_RE)


class ConfigurationError(TideflowError):
    """A process cannot start as configured (e.g. a module of ``TIDEFLOW_WORKFLOW_MODULES`` does not import)."""


@dataclass(frozen=True)
class ActivityDef:
    """A registered activity and its options (snapshotted into each of its task rows)."""

    name: str
    fn: Callable[..., Any] = field(compare=False)
    module: str
    qualname: str
    retries: int = 0
    retry_delay: float = 0.0
    retry_backoff: float = 2.0
    max_retry_delay: float = 3600.0
    timeout: float | None = None
    queue: str | None = None
    priority: int | None = None
    max_lost_attempts: int | None = None
    on_lost: Literal["retry", "fail"] = "retry"
    pool: str | None = None
    rate_limit: str | None = None
    #: ``{"key": ..., "limit": N}``: at most N running activities per rendered key (``{{ args.NAME }}``,
    #: ``{{ params.NAME }}``), cluster-wide, DAG tasks' keys included (app/services/limits.py)
    concurrency: ConcurrencySpec | None = None


@dataclass(frozen=True)
class Param:
    name: str
    annotation: Any  # the type hint (``inspect.Parameter.empty`` when there is none)
    required: bool
    default: Any = None


@dataclass(frozen=True)
class WorkflowDef:
    """A registered code workflow: a function ``fn(ctx, **params)``."""

    name: str
    fn: Callable[..., Any] = field(compare=False)
    module: str
    qualname: str
    params: tuple[Param, ...]
    priority: int = 5
    description: str = ""
    is_async: bool = False
    #: ``@tideflow.workflow(schedule=...)`` (synced to the ``schedules`` table by the scheduler pass of a process
    #: that imports the module: app/services/scheduler.py ``sync_code_schedules``); not part of the version
    schedules: tuple[ScheduleSpec, ...] = field(default=(), compare=False)
    max_active_runs: int | None = None
    #: limits: ``{"key": "{{ params.NAME }}", "limit": N}``: at most N running runs per rendered key
    concurrency: dict[str, Any] | None = field(default=None, compare=False)

    def definition(self) -> dict[str, Any]:
        """What the ``workflows`` table stores for it (a new version when this changes)."""
        d = {"kind": "code", "name": self.name, "module": self.module, "function": self.qualname,
             "params": [p.name for p in self.params], "required": [p.name for p in self.params if p.required],
             "priority": self.priority, "description": self.description}
        if self.max_active_runs is not None:  # limits: only when set (older workflows keep their digest)
            d["max_active_runs"] = self.max_active_runs
        if self.concurrency is not None:
            d["concurrency"] = self.concurrency
        return d

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.definition(), sort_keys=True).encode()).hexdigest()

    def parameters(self) -> list[TypedParameter]:
        """The typed parameters (:mod:`app.params`): from the function's hints and defaults."""
        return signature_parameters(self.fn, [(p.name, p.required, p.default) for p in self.params])

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The run's parameters, checked against the function's signature and hints (all problems in one error;
        :func:`app.params.check`). The function applies its own defaults."""
        return check(self.name, self.parameters(), params, merge_defaults=False)


_lock = threading.Lock()
_workflows: dict[str, WorkflowDef] = {}
_activities: dict[str, ActivityDef] = {}


def _origin(fn: Callable[..., Any]) -> tuple[str, str]:
    return fn.__module__, fn.__qualname__


def _register(table: dict[str, Any], kind: str, item: Any) -> None:
    if not NAME_PATTERN.match(item.name):
        raise DefinitionError([f"{kind} name '{item.name}' must match {NAME_RE}"])
    with _lock:
        old = table.get(item.name)
        if old is not None and (old.module, old.qualname) != (item.module, item.qualname):
            raise DefinitionError([f"{kind} '{item.name}' is registered twice: {old.module}.{old.qualname} and "
                                   f"{item.module}.{item.qualname}"])
        table[item.name] = item  # the same function imported again (a reload) replaces itself


@overload
def activity(fn: F, /) -> F: ...
@overload
def activity(
    fn: None = None, /, *, name: str | None = None, retries: int = 0, retry_delay: float = 0.0,
    retry_backoff: float = 2.0, max_retry_delay: float = 3600.0, timeout: float | None = None,
    queue: str | None = None, priority: int | None = None, max_lost_attempts: int | None = None,
    on_lost: Literal["retry", "fail"] = "retry", pool: str | None = None, rate_limit: str | None = None,
    concurrency: dict[str, Any] | None = None,
) -> Callable[[F], F]: ...


def activity(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None, retries: int = 0, retry_delay: float = 0.0,
    retry_backoff: float = 2.0, max_retry_delay: float = 3600.0, timeout: float | None = None,
    queue: str | None = None, priority: int | None = None, max_lost_attempts: int | None = None,
    on_lost: Literal["retry", "fail"] = "retry", pool: str | None = None, rate_limit: str | None = None,
    concurrency: dict[str, Any] | None = None,
) -> Any:
    """Register a function as an activity: a workflow calls it with ``ctx.activity(fn, ...)``; a worker runs it as
    a task of the run (claim, lease, retries with back-off, lost-attempt budget, timeout, queue, priority), and
    its JSON result is recorded. The function itself is returned unchanged (call it directly in unit tests).

    Limits (app/services/limits.py, enforced at the claim, cluster-wide): ``pool="db"`` (a slot of the pool,
    ``tideflow pool set db 4``), ``rate_limit="10/m"`` (N/s, N/m or N/h starts of this activity), and
    ``concurrency={"key": "customer-{{ args.customer_id }}", "limit": 1}``: at most ``limit`` running activities
    per rendered key, which may name the call's arguments by parameter name (``{{ args.NAME }}``) and the run's
    parameters (``{{ params.NAME }}``), or be a plain string. A malformed ``concurrency`` (not a dict, no key,
    limit < 1, an unsupported placeholder, ``args.NAME`` naming no parameter of the function) is a
    :class:`DefinitionError` here, at decoration; a key that does not render for one call (a ``params.NAME`` the
    run does not have, a path into an argument that is not there) fails that call's activity without running it
    (``tideflow.ActivityError`` with type ``TemplateError`` in the workflow)."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(f):
            raise DefinitionError([f"activity '{f.__qualname__}': async activities are not supported yet; "
                                   "write a plain function"])
        module, qualname = _origin(f)
        problems = []
        if retries < 0 or retry_delay < 0 or retry_backoff < 1 or max_retry_delay <= 0:
            problems.append("retries and retry_delay must be >= 0, retry_backoff >= 1, max_retry_delay > 0")
        if timeout is not None and timeout <= 0:
            problems.append("timeout must be > 0")
        if priority is not None and not 0 <= priority <= 9:
            problems.append("priority must be between 0 and 9")
        if max_lost_attempts is not None and max_lost_attempts < 1:
            problems.append("max_lost_attempts must be >= 1")
        if on_lost not in ("retry", "fail"):
            problems.append("on_lost must be 'retry' or 'fail'")
        if pool is not None and not re.match(POOL_RE, pool):
            problems.append(f"pool {pool!r} is not a pool name ({POOL_RE})")
        if rate_limit is not None and not re.match(RATE_RE, rate_limit):
            problems.append(f"rate_limit {rate_limit!r} is not N/s, N/m or N/h")
        spec, spec_problems = _activity_concurrency(f, concurrency)
        problems += spec_problems
        if problems:
            raise DefinitionError([f"activity '{name or f.__name__}': {p}" for p in problems])
        adef = ActivityDef(name or f.__name__, f, module, qualname, retries, float(retry_delay), float(retry_backoff),
                           float(max_retry_delay), timeout, queue, priority, max_lost_attempts, on_lost, pool,
                           rate_limit, spec)
        _register(_activities, "activity", adef)
        f.__tideflow_activity__ = adef  # type: ignore[attr-defined]
        return f

    return decorate(fn) if fn is not None else decorate


def _activity_concurrency(
    f: Callable[..., Any], concurrency: Any,
) -> tuple[ConcurrencySpec | None, list[str]]:
    """``@tideflow.activity(concurrency=...)`` checked at decoration: (the spec, problems)."""
    if concurrency is None:
        return None, []
    if isinstance(concurrency, ConcurrencySpec):
        spec = concurrency
    elif not isinstance(concurrency, dict):
        return None, [f"concurrency must be a dict {{'key': ..., 'limit': N}}, not {type(concurrency).__name__}"]
    else:
        try:
            spec = ConcurrencySpec.model_validate(concurrency, strict=True)
        except ValidationError as exc:
            return None, [f"concurrency.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" if e["loc"] else
                          f"concurrency: {e['msg']}" for e in exc.errors()]
    try:
        refs = templating.references(spec.key, templating.ACTIVITY_KEY_SCOPES)
    except templating.TemplateError as exc:
        return None, [f"concurrency.key: {exc}"]
    names = list(inspect.signature(f).parameters)
    unknown = sorted({path[0] for scope, path in refs if scope == "args" and path[0] not in names})
    if unknown:
        return None, [f"concurrency.key: {', '.join(f'args.{n}' for n in unknown)} is not a parameter of "
                      f"{f.__name__}({', '.join(names)})"]
    return spec, []


@overload
def workflow(fn: F, /) -> F: ...
@overload
def workflow(
    fn: None = None, /, *, name: str | None = None, priority: int = 5, description: str = "",
    schedule: Any = None,
    max_active_runs: int | None = None, concurrency: dict[str, Any] | None = None,
) -> Callable[[F], F]: ...


def workflow(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None, priority: int = 5, description: str = "",
    schedule: Any = None,
    max_active_runs: int | None = None, concurrency: dict[str, Any] | None = None,
) -> Any:
    """Register ``fn(ctx, **params)`` as a code workflow named ``name`` (default: the function's name). The
    function must be deterministic: everything that talks to the world goes through ``ctx`` (README: code
    workflows). ``schedule``: one schedule or a list (the fields of a DAG's ``schedule:``, as dicts or
    :class:`app.scheduling.ScheduleSpec`)."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        module, qualname = _origin(f)
        sig = inspect.signature(f)
        params = list(sig.parameters.values())
        if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                inspect.Parameter.POSITIONAL_OR_KEYWORD):
            raise DefinitionError([f"workflow '{name or f.__name__}': its first parameter must be the context "
                                   "(def fn(ctx, ...))"])
        declared = []
        for p in params[1:]:
            if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD,
                          inspect.Parameter.POSITIONAL_ONLY):
                raise DefinitionError([f"workflow '{name or f.__name__}': parameter '{p.name}' must be a plain "
                                       "keyword parameter (runs pass parameters by name)"])
            declared.append(Param(p.name, p.annotation, p.default is inspect.Parameter.empty,
                                  None if p.default is inspect.Parameter.empty else p.default))
        if not 0 <= priority <= 9:
            raise DefinitionError([f"workflow '{name or f.__name__}': priority must be between 0 and 9"])
        wname = name or f.__name__
        try:
            schedules = tuple(parse_schedules(schedule, wname))
        except ValueError as exc:
            raise DefinitionError([f"workflow '{wname}': {exc}"]) from None
        if max_active_runs is not None and (type(max_active_runs) is not int or max_active_runs < 1):
            raise DefinitionError([f"workflow '{wname}': max_active_runs must be an integer >= 1"])
        spec = None
        if concurrency is not None:
            try:
                spec = ConcurrencySpec.model_validate(concurrency).model_dump()
            except ValidationError as exc:
                raise DefinitionError([f"workflow '{wname}': concurrency: {e['msg']}"
                                       for e in exc.errors()]) from None
            unknown = [p for scope, path in templating.references(spec["key"])
                       if scope != "params" or path[0] not in {d.name for d in declared} for p in [path[0]]]
            if unknown:
                raise DefinitionError([f"workflow '{wname}': concurrency.key may name only its "
                                       f"parameters, not {unknown}"])
        wdef = WorkflowDef(wname, f, module, qualname, tuple(declared), priority, description,
                           inspect.iscoroutinefunction(f), schedules=schedules, max_active_runs=max_active_runs,
                           concurrency=spec)
        for sp in schedules:
            wdef.check_params(dict(sp.params))  # a schedule's parameters must start a run
        _register(_workflows, "workflow", wdef)
        f.__tideflow_workflow__ = wdef  # type: ignore[attr-defined]
        return f

    return decorate(fn) if fn is not None else decorate


def get_workflow(name: str) -> WorkflowDef | None:
    return _workflows.get(name)


def get_activity(name: str) -> ActivityDef | None:
    return _activities.get(name)


def workflows() -> list[WorkflowDef]:
    return sorted(_workflows.values(), key=lambda w: w.name)


def activities() -> list[ActivityDef]:
    return sorted(_activities.values(), key=lambda a: a.name)


def activity_def(ref: Any) -> ActivityDef:
    """The activity ``ref`` names: a decorated function or a registered name."""
    adef = getattr(ref, "__tideflow_activity__", None)
    if isinstance(adef, ActivityDef):
        return adef
    if isinstance(ref, str):
        found = _activities.get(ref)
        if found is not None:
            return found
        raise TideflowError(f"activity '{ref}' is not registered (is its module in TIDEFLOW_WORKFLOW_MODULES?)")
    raise TypeError(f"{ref!r} is not an activity: decorate it with @tideflow.activity")


def workflow_name(ref: Any) -> str:
    """The workflow ``ref`` names: a decorated function or a name (code or DAG)."""
    wdef = getattr(ref, "__tideflow_workflow__", None)
    if isinstance(wdef, WorkflowDef):
        return wdef.name
    if isinstance(ref, str):
        return ref
    raise TypeError(f"{ref!r} is not a workflow: pass its name or a @tideflow.workflow function")


_loaded: set[str] = set()


def add_pythonpath(pythonpath: str) -> list[str]:
    """``TIDEFLOW_PYTHONPATH``: its directories (``os.pathsep``-separated, like ``PYTHONPATH``), made absolute, put
    first on ``sys.path`` in their order (a directory already there moves to the front: the users' code wins, as
    with ``PYTHONPATH``). Returns them."""
    dirs = [os.path.abspath(d) for d in pythonpath.split(os.pathsep) if d.strip()]
    for d in reversed(dirs):
        while d in sys.path:
            sys.path.remove(d)
        sys.path.insert(0, d)
    importlib.invalidate_caches()
    return dirs


def load_modules(spec: str, pythonpath: str = "") -> list[str]:
    """Every process's start (CLI, web, workers, beat; :meth:`app.runtime.Runtime.create` and ``tasks/celery_app``):
    ``TIDEFLOW_PYTHONPATH`` first on ``sys.path`` (:func:`add_pythonpath`), then import the comma-separated modules
    of ``TIDEFLOW_WORKFLOW_MODULES`` (once per process). A module that cannot be imported is a
    :class:`ConfigurationError` naming it: the process must not start without the workflows it is expected to
    run."""
    add_pythonpath(pythonpath)
    names = [m.strip() for m in spec.split(",") if m.strip()]
    for module in names:
        if module in _loaded:
            continue
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure is a configuration error, named
            hint = f" (TIDEFLOW_PYTHONPATH: {pythonpath})" if pythonpath and isinstance(exc, ModuleNotFoundError) \
                else ""
            raise ConfigurationError(f"TIDEFLOW_WORKFLOW_MODULES: cannot import module '{module}': "
                                     f"{type(exc).__name__}: {exc}{hint}") from exc
        _loaded.add(module)
    return names
