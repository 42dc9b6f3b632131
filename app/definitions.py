"""Workflow definitions: the document users write (YAML, JSON or Python dicts) and its validation.

Validation is complete before anything is stored: :func:`parse_definition` either returns a
:class:`WorkflowSpec` or raises :class:`~app.errors.DefinitionError` listing every problem, each naming
the task and the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app import conditions, templating
from app.dag import TriggerRule
from app.dag import topological_order as dag_order
from app.errors import DefinitionError
from app.params import Parameter, dag_parameters
from app.params import check as check_params
from app.scheduling import ScheduleSpec, parse_schedules

NAME_RE = r"^[A-Za-z_][A-Za-z0-9_\-]{0,99}$"
#: a pool's name (``pool: NAME``, ``tideflow pool set NAME SLOTS``)
POOL_RE = r"^[A-Za-z0-9_.\-]{1,100}$"
#: a rate limit: at most N starts per second, minute or hour (``rate_limit: "10/m"``)
RATE_RE = r"^[1-9][0-9]{0,8}/[smh]$"
FUNCTION_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

TaskType = Literal["shell", "python", "subworkflow", "switch"]

# fields that only make sense for some task types
_TYPE_FIELDS: dict[str, set[str]] = {
    "shell": {"command", "env"},
    "python": {"function", "args"},
    "subworkflow": {"workflow", "params"},
    "switch": {"cases", "default"},
}
_REQUIRED: dict[str, str] = {"shell": "command", "python": "function", "subworkflow": "workflow", "switch": "cases"}
#: task types the master runs itself (no worker, no attempt budget)
_MASTER_TYPES = ("subworkflow", "switch")


class SwitchCase(BaseModel):
    """One branch of a ``switch`` task: the tasks it runs (``next``) when its condition (``when``) holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    when: str = Field(min_length=1)
    next: str | list[str]

    def targets(self) -> list[str]:
        return [self.next] if isinstance(self.next, str) else list(self.next)


class ConcurrencySpec(BaseModel):
    """limits (app/services/limits.py): at most ``limit`` of the runs (a workflow's) or running tasks (a task's)
    with the same rendered ``key`` at once (Hatchet's concurrency keys, DBOS's partitioned queues). The key may
    name the run's parameters only (``{{ params.customer }}``), rendered when the run starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1, max_length=200)
    limit: int = Field(ge=1, le=1_000_000)


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_RE)
    type: TaskType
    command: str | None = Field(None, min_length=1)
    env: dict[str, str] | None = None
    function: str | None = None
    args: dict[str, Any] | None = None
    workflow: str | None = Field(None, pattern=NAME_RE)
    params: dict[str, Any] | None = None
    depends_on: list[str] = Field(default_factory=list)
    retries: int = Field(0, ge=0, le=100)
    retry_delay: float = Field(0.0, ge=0, le=86400)
    retry_backoff: float = Field(2.0, ge=1, le=10)
    max_retry_delay: float = Field(3600.0, gt=0, le=86400)
    timeout: float | None = Field(None, gt=0, le=7 * 86400)
    queue: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]{1,100}$")
    priority: int | None = Field(None, ge=0, le=9)
    #: lost attempts (lease lapsed: worker killed, OOM, host lost) retried before the task fails; None: the
    #: deployment's ``TIDEFLOW_MAX_LOST_ATTEMPTS``, snapshotted when the run starts
    max_lost_attempts: int | None = Field(None, ge=1, le=100)
    #: ``fail``: a lost attempt fails the task (a body that must never run twice)
    on_lost: Literal["retry", "fail"] = "retry"
    # branching (``app.dag``, ``app.conditions``); None is the default, so definitions that do not branch keep
    # their digest
    #: when the task runs, from its upstream tasks' states (Airflow's trigger rules); None: all_success
    trigger_rule: TriggerRule | None = None
    #: a condition on params and upstream results: false skips the task (and, by the trigger rules, downstream)
    when: str | None = Field(None, min_length=1)
    #: a switch task: the first case whose condition holds picks the branch (its ``next``), else ``default``; the
    #: branches not picked are skipped
    cases: list[SwitchCase] | None = Field(None, min_length=1)
    default: str | list[str] | None = None

    def branches(self) -> list[tuple[str, list[str]]]:
        """A switch's cases as (condition, next tasks)."""
        return [(c.when, c.targets()) for c in self.cases or []]

    def default_branch(self) -> list[str]:
        return [] if self.default is None else [self.default] if isinstance(self.default, str) else list(self.default)
    #: limits (app/services/limits.py): the pool whose slot each attempt takes (``tideflow pool set NAME SLOTS``)
    pool: str | None = Field(None, pattern=POOL_RE)
    #: limits: at most ``limit`` of the tasks with the same rendered key run at once (across runs and workflows)
    concurrency: ConcurrencySpec | None = None
    #: limits: at most N attempts of this task (across runs) start per second/minute/hour (``"10/m"``)
    rate_limit: str | None = Field(None, pattern=RATE_RE)


class WorkflowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_RE)
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(5, ge=0, le=9)
    on_failure: Literal["stop", "continue"] = "stop"
    #: limits (app/services/limits.py): at most this many runs of the workflow run at once; more wait ``queued``
    max_active_runs: int | None = Field(None, ge=1, le=1_000_000)
    #: limits: at most ``limit`` running runs of the workflow with the same rendered key; more wait ``queued``
    concurrency: ConcurrencySpec | None = None
    tasks: list[TaskSpec] = Field(min_length=1, max_length=100_000)
    #: cron schedules: one mapping or a list (``app.scheduling.ScheduleSpec``), checked by :func:`schedules_of`
    schedule: dict[str, Any] | list[dict[str, Any]] | None = None

    def schedules(self) -> list[ScheduleSpec]:
        """The declared schedules, each named (default: the workflow's name)."""
        return parse_schedules(self.schedule, self.name)

    def task(self, name: str) -> TaskSpec:
        return self.tasks_by_name()[name]

    def tasks_by_name(self) -> dict[str, TaskSpec]:
        return {t.name: t for t in self.tasks}

    def canonical(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def digest(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def _where(loc: tuple[Any, ...], raw: Any) -> str:
    if len(loc) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int):
        name = None
        tasks = raw.get("tasks") if isinstance(raw, dict) else None
        if isinstance(tasks, list) and loc[1] < len(tasks) and isinstance(tasks[loc[1]], dict):
            name = tasks[loc[1]].get("name")
        rest = ".".join(str(p) for p in loc[2:])
        who = f"task '{name}'" if name else f"tasks[{loc[1]}]"
        return f"{who}: {rest}" if rest else who
    return ".".join(str(p) for p in loc) or "workflow"


def _semantic_problems(spec: WorkflowSpec) -> list[str]:
    problems: list[str] = list(dag_parameters(spec.params)[1])
    names = [t.name for t in spec.tasks]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            problems.append(f"task '{n}': duplicate task name")
        seen.add(n)
    for t in spec.tasks:
        problems.extend(_task_problems(spec, t, seen))
    if not problems:
        cycle = find_cycle(spec)
        if cycle:
            problems.append(f"task '{cycle[0]}': dependency cycle {' -> '.join(cycle)}")
    if not problems:
        problems.extend(_template_problems(spec))
        problems.extend(_switch_problems(spec))
    if not problems:
        problems.extend(_schedule_problems(spec))
    return problems


def _schedule_problems(spec: WorkflowSpec) -> list[str]:
    """Each schedule parses (cron, timezone, fields) and its ``params`` start a run of this workflow."""
    try:
        schedules = spec.schedules()
    except ValueError as exc:
        return [str(exc)]
    problems: list[str] = []
    for sp in schedules:
        try:
            check_run_params(spec, dict(sp.params))
        except DefinitionError as exc:
            problems.extend(f"schedule '{sp.name}': params: {p}" for p in exc.problems)
    return problems


def _switch_problems(spec: WorkflowSpec) -> list[str]:
    """A switch's branches are its direct downstream tasks, all of them (DolphinScheduler's SWITCH: the edges out
    of the switch are its branches)."""
    problems = []
    downstream: dict[str, set[str]] = {t.name: set() for t in spec.tasks}
    for t in spec.tasks:
        for d in t.depends_on:
            downstream[d].add(t.name)
    for t in spec.tasks:
        if t.type != "switch":
            continue
        named = [n for _, nxt in t.branches() for n in nxt] + t.default_branch()
        for n in dict.fromkeys(named):
            if n not in downstream[t.name]:
                problems.append(f"task '{t.name}': branch '{n}' is not a task that depends on '{t.name}' "
                                f"(add '{t.name}' to its depends_on)")
        for n in sorted(downstream[t.name] - set(named)):
            problems.append(f"task '{t.name}': task '{n}' depends on the switch but is none of its branches "
                            "(cases[].next or default)")
    return problems


def _task_problems(spec: WorkflowSpec, t: TaskSpec, names: set[str]) -> list[str]:
    problems = []
    required = _REQUIRED[t.type]
    if getattr(t, required) is None:
        problems.append(f"task '{t.name}': a {t.type} task needs '{required}'")
    for field in set().union(*_TYPE_FIELDS.values()) - _TYPE_FIELDS[t.type]:
        if getattr(t, field) is not None:
            problems.append(f"task '{t.name}': '{field}' does not apply to a {t.type} task")
    if t.type == "python" and t.function is not None and not FUNCTION_RE.match(t.function):
        problems.append(f"task '{t.name}': function '{t.function}' is not of the form 'package.module:callable'")
    if t.type in _MASTER_TYPES:
        if t.retries or t.timeout is not None or t.queue is not None or t.max_lost_attempts is not None \
                or t.on_lost != "retry":
            where = "(set them on the child workflow's tasks)" if t.type == "subworkflow" else "(the master runs it)"
            problems.append(
                f"task '{t.name}': retries, timeout, queue, max_lost_attempts and on_lost do not apply to a "
                f"{t.type} task {where}"
            )
        if t.rate_limit is not None:
            problems.append(f"task '{t.name}': rate_limit does not apply to a {t.type} task")
        if t.concurrency is not None:
            problems.append(f"task '{t.name}': concurrency does not apply to a {t.type} task (set it on the "
                            "tasks it leads to)")
        if t.pool is not None:
            problems.append(f"task '{t.name}': pool does not apply to a {t.type} task (the tasks it leads to take "
                            "the slots)")
        if t.workflow == spec.name:
            problems.append(f"task '{t.name}': a workflow cannot start itself as a subworkflow")
    deps = t.depends_on
    if len(set(deps)) != len(deps):
        problems.append(f"task '{t.name}': depends_on lists a task twice")
    for d in deps:
        if d == t.name:
            problems.append(f"task '{t.name}': depends on itself")
        elif d not in names:
            problems.append(f"task '{t.name}': depends_on names unknown task '{d}'")
    return problems


def find_cycle(spec: WorkflowSpec) -> list[str] | None:
    """A dependency cycle as a list of names (first == last), or None. Iterative: DAGs may be large."""
    deps = {t.name: t.depends_on for t in spec.tasks}
    color: dict[str, int] = {}
    for root in deps:
        if color.get(root):
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                color[node] = 1
                path.append(node)
            children = deps.get(node, [])
            if i < len(children):
                stack.append((node, i + 1))
                child = children[i]
                if color.get(child) == 1:
                    return path[path.index(child):] + [child]
                if not color.get(child):
                    stack.append((child, 0))
            else:
                color[node] = 2
                path.pop()
    return None


def topological_order(spec: WorkflowSpec) -> list[str]:
    return dag_order({t.name: t.depends_on for t in spec.tasks})


def _template_problems(spec: WorkflowSpec) -> list[str]:
    problems = []
    deps = {t.name: t.depends_on for t in spec.tasks}

    def is_upstream(name: str, of: str) -> bool:
        # a walk per reference, not ancestors(): that is quadratic in memory for long chains
        seen: set[str] = set()
        stack = list(deps[of])
        while stack:
            n = stack.pop()
            if n == name:
                return True
            if n not in seen:
                seen.add(n)
                stack.extend(deps[n])
        return False

    keys = {"workflow": spec.concurrency} | {f"task '{t.name}'": t.concurrency for t in spec.tasks}
    for where, c in keys.items():
        if c is None:
            continue
        try:
            key_refs = templating.references(c.key)
        except templating.TemplateError as exc:
            problems.append(f"{where}: concurrency.key: {exc}")
            continue
        for scope, path in key_refs:
            if scope != "params":
                problems.append(f"{where}: concurrency.key may name only the run's params, not '{scope}'")
            elif path[0] not in spec.params:
                problems.append(f"{where}: concurrency.key: parameter '{path[0]}' is not declared in the "
                                "workflow's params")
    for t in spec.tasks:
        fields = {"command": t.command, "env": t.env, "args": t.args, "params": t.params}
        refs: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        for field, value in fields.items():
            if value is None:
                continue
            try:
                refs[field] = templating.references(value)
            except templating.TemplateError as exc:
                problems.append(f"task '{t.name}': {field}: {exc}")
        # conditions: the same names as placeholders (``app.conditions``)
        exprs = {"when": t.when} if t.when is not None else {}
        exprs.update({f"cases[{i}].when": when for i, (when, _) in enumerate(t.branches())})
        for field, source in exprs.items():
            try:
                refs[field] = conditions.references(source)
            except conditions.ConditionError as exc:
                problems.append(f"task '{t.name}': {field}: {source}: {exc}")
        for field, found in refs.items():
            for scope, path in found:
                if scope == "params" and path[0] not in spec.params:
                    problems.append(
                        f"task '{t.name}': {field}: parameter '{path[0]}' is not declared in the workflow's params"
                    )
                elif scope == "upstream" and not is_upstream(path[0], t.name):
                    problems.append(
                        f"task '{t.name}': {field}: '{path[0]}' is not an upstream task of '{t.name}'"
                    )
                elif scope == "run" and path[0] not in ("id", "priority", "workflow"):
                    problems.append(f"task '{t.name}': {field}: 'run.{path[0]}' is not one of run.id/priority/workflow")
                elif scope == "schedule" and (len(path) != 1 or path[0] not in ("time", "name")):
                    problems.append(f"task '{t.name}': {field}: 'schedule.{'.'.join(path)}' is not one of "
                                    "schedule.time/name")
    return problems


def parse_definition(raw: Any) -> WorkflowSpec:
    """Validate a definition given as a dict (or a :class:`WorkflowSpec`)."""
    if isinstance(raw, WorkflowSpec):
        raw = raw.canonical()
    if not isinstance(raw, dict):
        raise DefinitionError([f"a workflow definition must be a mapping, not {type(raw).__name__}"])
    try:
        spec = WorkflowSpec.model_validate(raw)
    except ValidationError as exc:
        raise DefinitionError(
            [f"{_where(tuple(e['loc']), raw)}: {e['msg']}" for e in exc.errors()]
        ) from None
    problems = _semantic_problems(spec)
    if problems:
        raise DefinitionError(problems)
    return spec


def load_definition_file(path: str | Path) -> WorkflowSpec:
    """Read and validate a YAML or JSON file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise DefinitionError([f"{p}: cannot read: {exc.strerror}"]) from None
    try:
        raw = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise DefinitionError([f"{p}: not valid JSON: {exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise DefinitionError([f"{p}: not valid YAML{where}: {problem}"]) from None
    return parse_definition(raw)


def task_inputs(task: TaskSpec) -> list[str]:
    """The upstream tasks whose results a task receives (``context.upstream``, placeholders): its direct
    dependencies and any ancestor its placeholders name. Bounded by the task's own definition, not by the DAG's
    size, so starting a task costs the same in a 10-task and a 10,000-task run."""
    names = set(task.depends_on)
    for value in (task.command, task.env, task.args, task.params):
        if value is not None:
            names.update(path[0] for scope, path in templating.references(value) if scope == "upstream")
    return sorted(names)


_BODY_FIELDS = ("command", "env", "function", "args", "workflow", "params")


def task_row_values(spec: WorkflowSpec, task: TaskSpec, *, default_max_lost_attempts: int) -> dict[str, Any]:
    """What a task row snapshots of its definition (``app.db.schema.TaskRun``): what to run and how to retry."""
    body: dict[str, Any] = {f: getattr(task, f) for f in _BODY_FIELDS if getattr(task, f) is not None}
    body["inputs"] = task_inputs(task)
    return {
        "name": task.name, "type": task.type, "body": body, "timeout": task.timeout, "retries": task.retries,
        "retry_delay": task.retry_delay, "retry_backoff": task.retry_backoff,
        "max_retry_delay": task.max_retry_delay, "on_lost": task.on_lost, "pool": task.pool,
        "rate_limit": task.rate_limit, "rate_key": f"task:{spec.name}.{task.name}" if task.rate_limit else None,
        "max_lost_attempts": task.max_lost_attempts if task.max_lost_attempts is not None
        else default_max_lost_attempts,
    }


def parameters(spec: WorkflowSpec) -> list[Parameter]:
    """A DAG's typed parameters (:func:`app.params.dag_parameters`; a parsed spec has no problems)."""
    return dag_parameters(spec.params)[0]


def check_run_params(spec: WorkflowSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Run parameters checked against the declared ones (:func:`app.params.check`) and merged over their
    defaults."""
    return check_params(spec.name, parameters(spec), params)
