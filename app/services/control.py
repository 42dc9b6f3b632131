"""Operator actions: register a workflow, cancel a run, retry a run from its failed tasks."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from app import templating
from app.db import repository as repo
from app.definitions import WorkflowSpec, parse_definition
from app.errors import DefinitionError, InvalidState, NotFound
from app.params import ARTICLE, Parameter, Unfit, check_value, dag_parameters, json_type
from app.records import WorkflowRecord
from app.runtime import Runtime
from app.services.master import advance_locked, cancel_locked
from app.states import RUN_TERMINAL, RunKind, RunState, TaskState


def check_definition(
    s: Session, definition: WorkflowSpec | dict[str, Any], *, python_modules: tuple[str, ...] = (),
) -> tuple[WorkflowSpec, list[str]]:
    """Every check a registration makes, storing nothing (``tideflow workflow validate``): the definition, its
    name against the code workflows, its subworkflows, and each ``python`` task's function against its ``args``
    (imported when this process can; ``python_modules``: ``TIDEFLOW_PYTHON_MODULES``, never crossed). Returns the
    spec and the warnings (what could not be checked here); a problem is a :class:`DefinitionError`."""
    spec = parse_definition(definition)
    from app.code import registry
    from app.executors.python import check_call

    code = registry.get_workflow(spec.name)
    if code is not None:
        raise DefinitionError([f"workflow '{spec.name}' is a code workflow in this process ({code.module}."
                               f"{code.qualname}): a DAG cannot take its name (a name is one kind of workflow)"])
    problems = _child_problems(s, spec)
    warnings: list[str] = []
    for t in spec.tasks:
        if t.type == "python" and t.function is not None:
            problem, warning = check_call(t.function, t.args or {}, python_modules)
            problems += [f"task '{t.name}': {problem}"] if problem else []
            warnings += [f"task '{t.name}': {warning}"] if warning else []
    if problems:
        raise DefinitionError(problems)
    return spec, warnings


def register_workflow(
    s: Session, definition: WorkflowSpec | dict[str, Any], *, python_modules: tuple[str, ...] = (),
) -> tuple[WorkflowRecord, bool, list[str]]:
    """Store a definition. Same content as the latest version: returns it (created=False); anything else
    becomes the new latest version. Invalid: :class:`DefinitionError` and nothing is stored. Also returns the
    warnings of :func:`check_definition`."""
    spec, warnings = check_definition(s, definition, python_modules=python_modules)
    digest = spec.digest()
    from app.services import scheduler

    scheduler.sync(s, spec.name, spec.schedules())  # its schedules (paused ones stay paused)
    latest = repo.workflow(s, spec.name)
    if latest is not None and latest.digest == digest:
        return latest, False, warnings
    return repo.insert_workflow(s, spec.name, digest, spec.canonical()), True, warnings


def _child_problems(s: Session, spec: WorkflowSpec) -> list[str]:
    """What can be checked of a subworkflow task before anything runs: its child is registered, every parameter it
    passes is declared by the child (its latest version: the one a run would start), every required one is passed,
    and each passed value whose type is known now is of the declared type (:func:`_passed_type`)."""
    problems: list[str] = []
    children: dict[str, list[Parameter] | None] = {}
    parent = {p.name: p for p in dag_parameters(spec.params)[0]}
    for t in spec.tasks:
        if t.type != "subworkflow" or not t.workflow:
            continue
        if t.workflow not in children:
            children[t.workflow] = _declared_params(s, t.workflow)
        child = children[t.workflow]
        if child is None:
            problems.append(f"task '{t.name}': subworkflow '{t.workflow}' is not registered (register it first, or "
                            "for a code workflow import its module in this process: TIDEFLOW_WORKFLOW_MODULES)")
            continue
        declared = ", ".join(sorted(p.name for p in child)) or "none"
        passed = t.params or {}
        problems.extend(
            f"task '{t.name}': params: '{p}' is not a parameter of workflow '{t.workflow}' (declared: {declared})"
            for p in sorted(set(passed) - {p.name for p in child}))
        problems.extend(f"task '{t.name}': params: workflow '{t.workflow}' requires parameter '{p.name}'"
                        for p in child if p.required and p.name not in passed)
        for p in child:
            if p.name in passed:
                problem = _passed_type(p, passed[p.name], parent)
                if problem:
                    problems.append(f"task '{t.name}': params: '{p.name}' ({p.type} in workflow '{t.workflow}'): "
                                    f"{problem}")
    return problems


#: the types of the run placeholders (``{{ run.id }}`` ...), kept by a value that is one placeholder
_RUN_TYPES = {"id": "integer", "priority": "integer", "workflow": "string"}


def _passed_type(p: Parameter, value: Any, parent: dict[str, Parameter]) -> str | None:
    """Why ``value``, passed to the child's parameter ``p``, cannot fit it, when that is known at registration: a
    literal is checked as a start would check it; a value that is one placeholder keeps the type of what it names
    (a parent parameter's declared type, ``run.id``'s integer); text around a placeholder makes a string. An
    upstream result's type is not known before it runs."""
    refs = templating.references(value)
    if not refs:
        try:
            check_value(p, value)
        except Unfit as exc:
            return f"{json.dumps(value)} is not {exc}"
        return None
    if p.type == "any":
        return None
    if isinstance(value, str) and len(refs) == 1 and value.strip().startswith("{{") and value.strip().endswith("}}"):
        scope, path = refs[0]
        if scope == "params" and len(path) == 1 and path[0] in parent:
            source = parent[path[0]].type
        elif scope == "run":
            source = _RUN_TYPES.get(path[0], "any")
        else:
            return None
    else:
        source = json_type(value)  # text around placeholders: a string; a list or mapping holding some
    if source in ("any", p.type) or (source, p.type) == ("integer", "number"):
        return None
    return f"{value!r} is {ARTICLE[source]}"


def _declared_params(s: Session, name: str) -> list[Parameter] | None:
    """The typed parameters a workflow declares: a code workflow's (registered in this process; stored: its names,
    untyped), or the latest DAG version's. None: no such workflow."""
    from app.code import registry

    code = registry.get_workflow(name)
    if code is not None:
        return code.parameters()
    row = repo.workflow(s, name)
    if row is None:
        return None
    if row.definition.get("kind") == "code":
        required = set(row.definition.get("required", []))
        return [Parameter(n, required=n in required, nullable=True) for n in row.definition.get("params", [])]
    return dag_parameters(dict(row.definition.get("params") or {}))[0]


def cancel_run(rt: Runtime, run_id: int, *, actor: str = "api", reason: str = "cancelled by request") -> None:
    """Cancel: pending tasks never start, running ones lose their lease and stop, child runs are cancelled."""
    with rt.db.transaction() as s:
        run = repo.lock_run(s, run_id)
        if run is None:
            raise NotFound(f"run {run_id} does not exist")
        if run.state in RUN_TERMINAL:
            raise InvalidState(f"run {run_id} is already {run.state}")
        cancel_locked(s, rt, run, actor=actor, reason=reason)


def retry_run(rt: Runtime, run_id: int, *, actor: str = "api") -> int:
    """Re-run a failed or cancelled run from the tasks that did not succeed (their retry budget resets).
    Returns how many tasks were reset."""
    with rt.db.transaction() as s:
        run = repo.lock_run(s, run_id)
        if run is None:
            raise NotFound(f"run {run_id} does not exist")
        if run.state not in (RunState.FAILED, RunState.CANCELLED):
            raise InvalidState(f"run {run_id} is {run.state}; only failed or cancelled runs can be retried")
        if run.parent_task_run_id is not None:
            raise InvalidState(f"run {run_id} is a child run; retry its parent run instead")
        if run.kind == RunKind.CODE:
            raise InvalidState(f"run {run_id} is a code run: start it again (a code run's history is replayed, "
                               "not retried from a task)")
        reset = 0
        for task in repo.run_tasks(s, run.id):
            if task.state in (TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED):
                reset += repo.transition_task(
                    s, task, TaskState.PENDING, actor=actor, reason="run retried", failures=0, lost_attempts=0,
                    error=None, result=None, finished_at=None, handled=True, child_run_id=None,
                )
        repo.transition_run(s, run, RunState.RUNNING, actor=actor, reason=f"retried ({reset} tasks reset)")
        fresh = repo.get_run(s, run.id)
        assert fresh is not None
        advance_locked(s, rt, fresh, actor=actor, full=True)
        return reset
