"""``tideflow`` command line. Read commands take ``--json``; errors are one line on stderr and exit 1."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from app.config import load_settings
from app.errors import TideflowError
from app.extras import require
from app.progress import LiveProgress, UnclaimedNotice, styled, tasks_table
from app.services import views
from app.states import RUN_SETTLED, RUN_TERMINAL, RunKind, RunState

if TYPE_CHECKING:
    from app.client import Tideflow

console = Console()


def _client() -> Tideflow:
    from app.client import Tideflow

    return Tideflow.from_env()


def _read(view: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a read view (``app.services.views``) in a read-only session."""
    return _client().read(view, *args, **kwargs)


def _emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        render(data)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TideflowError as exc:
            click.echo(f"error: {' '.join(str(exc).split())}", err=True)
            sys.exit(1)
        except Exception as exc:  # noqa: BLE001 - one clear line for operators, not a traceback
            if isinstance(exc, click.exceptions.Exit | click.ClickException | click.Abort | SystemExit):
                raise
            said = _explain_database_error(exc)
            click.echo(f"error: {said or type(exc).__name__ + ': ' + ' '.join(str(exc).split())}", err=True)
            sys.exit(1)


def _explain_database_error(exc: Exception) -> str | None:
    """A raw SQL error made into advice (:meth:`app.db.engine.Database.explain`): e.g. "... run `tideflow db
    upgrade`" when the database has no schema yet."""
    from sqlalchemy.exc import DBAPIError

    if not isinstance(exc, DBAPIError):
        return None
    from app.db.engine import Database

    settings = load_settings()
    database = Database(settings.database_url, pool_size=1, settings=settings)
    try:
        return database.explain(exc)
    finally:
        database.dispose()


@click.group(cls=_Group)
def cli() -> None:
    """Tideflow: durable workflows on Celery: YAML/JSON DAGs and Python code workflows."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: like Click's standalone mode, but a usage error is one line too (exit 2)."""
    try:
        cli.main(args=argv, prog_name="tideflow", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)


# -- db ---------------------------------------------------------------------------------------------
@cli.group(cls=_Group)
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema to the latest version."""
    from app.db.migrate import upgrade_reported

    settings = load_settings()
    report = upgrade_reported(settings.database_url)
    click.echo(f"database at {settings.database_url.split('@')[-1]} {report}")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> float:
    """``90d``, ``12h``, ``30m``, ``3600s`` (or bare seconds) -> seconds."""
    unit = text[-1:].lower()
    number = text[:-1] if unit in _DURATION_UNITS else text
    try:
        value = float(number) * _DURATION_UNITS.get(unit, 1)
    except ValueError:
        raise click.BadParameter(f"{text!r}: a duration like 90d, 12h, 30m or 3600s") from None
    if value <= 0:
        raise click.BadParameter(f"{text!r}: must be positive")
    return value


@db.command("prune")
@click.option("--older-than", "older_than", required=True, help="finished more than this long ago: 90d, 12h, 30m")
@click.option("--batch-size", default=500, show_default=True, help="top-level runs deleted per transaction")
@click.option("--dry-run", is_flag=True, help="count what would be deleted, delete nothing")
def db_prune(older_than: str, batch_size: int, dry_run: bool) -> None:
    """Delete finished runs (with their child runs, tasks, attempts, events and signals) finished before a cutoff."""
    from datetime import timedelta

    from app.services.control import prune_history

    tf = _client()
    try:
        report = prune_history(tf.runtime, timedelta(seconds=_duration(older_than)), batch_size=batch_size,
                               dry_run=dry_run)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    finally:
        tf.close()
    cutoff = report.cutoff.isoformat(timespec="seconds")
    kept = (f"; kept {report.kept_live_trees} finished run(s) whose child runs are not finished"
            if report.kept_live_trees else "")
    if dry_run:
        click.echo(f"would delete {report.runs} run(s) and {report.tasks} task(s) finished before {cutoff}{kept}")
    else:
        click.echo(f"deleted {report.runs} run(s), {report.tasks} task(s), {report.attempts} attempt(s), "
                   f"{report.events} event(s), {report.signals} signal(s) finished before {cutoff}{kept}")


# -- workflows --------------------------------------------------------------------------------------
@cli.group(cls=_Group)
def workflow() -> None:
    """Workflow definitions."""


@workflow.command("register")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def workflow_register(path: str, as_json: bool) -> None:
    """Validate and store a YAML/JSON definition (a changed definition becomes a new version)."""
    data = _client().register_report(path)
    for warning in data["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    _emit(data, as_json, lambda d: click.echo(
        f"registered {d['name']} version {d['version']}" if d["created"]
        else f"{d['name']} version {d['version']} is unchanged"))


@workflow.command("validate")
@click.argument("path", type=click.Path(dir_okay=False))
def workflow_validate(path: str) -> None:
    """Check a YAML/JSON definition exactly as ``register`` would (a python task's function against its args when
    its module imports here), storing nothing: one line, OK or the error (exit 1)."""
    data = _client().validate(path)
    for warning in data["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"ok: {path} is a valid definition of workflow {data['name']} (nothing stored)")


@workflow.command("list")
@click.option("--json", "as_json", is_flag=True)
def workflow_list(as_json: bool) -> None:
    rows = _read(views.list_workflows)

    def render(rows: list[dict[str, Any]]) -> None:
        # the names and module:function whole (a narrow terminal wraps the time instead)
        t = Table(Column("name", no_wrap=True), Column("kind", no_wrap=True, min_width=4),
                  Column("version", no_wrap=True, min_width=7), Column("tasks / function", no_wrap=True),
                  Column("registered", overflow="fold"))
        for r in rows:
            what = f"{r['module']}:{r['function']}" if r["kind"] == "code" else str(r["tasks"])
            # a code workflow no run has stored yet has no version (it is stored when first started)
            t.add_row(r["name"], r["kind"], str(r["version"]) if r["version"] is not None else "-", what,
                      (r["created_at"] or "")[:19].replace("T", " "))
        console.print(t)

    _emit(rows, as_json, render)


@workflow.command("show")
@click.argument("name")
@click.option("--version", type=int)
@click.option("--json", "as_json", is_flag=True)
def workflow_show(name: str, version: int | None, as_json: bool) -> None:
    data = _read(views.show_workflow, name, version)

    def render(d: dict[str, Any]) -> None:
        console.print(f"[bold]{d['name']}[/] version {d['version']} (versions: {d['versions']})")
        if d["parameters"]:
            p = Table("parameter", "type", "default", "description")
            for param in d["parameters"]:
                p.add_row(param["name"], param["type"] + ("" if param["enum"] is None else
                                                          f" ({', '.join(json.dumps(e) for e in param['enum'])})"),
                          "(required)" if param["required"] else json.dumps(param["default"]), param["description"])
            console.print(p)
        t = Table("task", "type", "depends on", "runs when", "retries", "timeout", "queue")
        for task in d["definition"]["tasks"]:
            when = " ".join(filter(None, [task.get("trigger_rule"), task.get("when") and f"if {task['when']}"]))
            t.add_row(task["name"], task["type"], ", ".join(task.get("depends_on", [])), escape(when),
                      str(task.get("retries", 0)), str(task.get("timeout", "")), task.get("queue", ""))
        console.print(t)

    _emit(data, as_json, render)


# -- runs -------------------------------------------------------------------------------------------
@cli.group(cls=_Group)
def run() -> None:
    """Workflow runs."""


def _split_params(pairs: tuple[str, ...]) -> dict[str, str]:
    raw: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"'{pair}' is not key=value", param_hint="-p")
        key, value = pair.split("=", 1)
        raw[key] = value
    return raw


def _parse_params(tf: Tideflow, name: str, pairs: tuple[str, ...]) -> dict[str, Any]:
    """``-p k=v`` values converted by the declared types (:func:`app.params.parse_text`), a value that does not fit
    is one error before anything is stored: a code workflow registered in this process
    (``TIDEFLOW_WORKFLOW_MODULES``) by its parameters' type hints, a DAG by its ``params:`` types (a string keeps
    the text; an untyped one is JSON if it parses, else the text)."""
    from app.code import registry
    from app.params import Parameter, hint_parameters, parse_text

    raw = _split_params(pairs)
    wdef = registry.get_workflow(name)
    if wdef is not None:
        annotations = {p.name: p.annotation for p in wdef.params}
        return parse_text(wdef.name, hint_parameters(wdef.fn, annotations, raw), raw)
    declared = tf.parameters(name)
    if declared is None:  # not registered: the start says so; the values as untyped ones meanwhile
        return parse_text(name, [Parameter(k) for k in raw], raw)
    return parse_text(name, declared, raw)


@run.command("start")
@click.argument("name")
@click.option("-p", "--param", "params", multiple=True,
              help="key=value, converted by the parameter's type (a code workflow's type hint, a DAG's params: "
                   "type); an untyped value is parsed as JSON if it can be")
@click.option("--key", help="idempotent start: if a run holds this key, that run is the answer (nothing starts)")
@click.option("--priority", type=click.IntRange(0, 9))
@click.option("--wait", is_flag=True, help="show live progress; exit 0 only if the run succeeded")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="with --wait")
@click.option("--dry-run", is_flag=True,
              help="check that the workflow exists and the parameters convert; print them; start nothing")
@click.option("--json", "as_json", is_flag=True)
def run_start(name: str, params: tuple[str, ...], key: str | None, priority: int | None, wait: bool,
              timeout: float, dry_run: bool, as_json: bool) -> None:
    """Start a run. ``--json`` prints the run as ``POST /api/runs`` returns it (at the end, with ``--wait``)."""
    tf = _client()  # imports TIDEFLOW_WORKFLOW_MODULES first: the code workflows' hints convert -p values
    values = _parse_params(tf, name, params)
    logging.getLogger("app.broker").setLevel(logging.ERROR)  # a publish that failed is said below, in one line
    if dry_run:
        resolved = tf.check_start(name, values)
        _emit({"workflow": name, "params": resolved}, as_json, lambda d: click.echo(
            f"ok: a run of {name} would start with params {json.dumps(d['params'], sort_keys=True)} "
            "(dry run: nothing stored)"))
        return
    run_id, created = tf.start_run_keyed(name, values, priority=priority, key=key)
    said = f"started run {run_id}" if created else f"existing run {run_id} (key '{key}' is held by it)"
    unsent = getattr(tf.runtime.dispatcher, "last_publish_error", None)
    if unsent:
        said += (f"; the broker is unreachable ({unsent}): the run is stored and its tasks are dispatched when "
                 f"the broker is back (the reconciler publishes them again)")
    if not wait:
        if (not created or unsent) and as_json:
            click.echo(said, err=True)  # stdout stays the run's JSON
        _emit(tf.run(run_id), as_json, lambda d: click.echo(said))
        return
    if not as_json or not created:
        click.echo(said, err=as_json)
    data = _watch(tf, run_id, timeout, quiet=as_json)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    sys.exit(0 if data["state"] == RunState.SUCCEEDED else 1)


def _watch(tf: Tideflow, run_id: int, timeout: float, quiet: bool = False) -> dict[str, Any]:
    """Wait for the run (:meth:`app.client.Tideflow.wait`, the one polling loop); return its last view. Unless
    ``quiet`` (``--json`` keeps stdout JSON), show its live progress (:class:`app.progress.LiveProgress`)."""
    settings = tf.runtime.settings
    notice = UnclaimedNotice(settings.wait_unclaimed_warning_seconds, settings.master_queue,
                             lambda line: click.echo(line, err=True))
    if quiet:
        data = tf.wait(run_id, timeout=timeout, on_progress=notice)
    else:
        with LiveProgress(console) as show:
            def both(view: dict[str, Any]) -> None:
                notice(view)
                show(view)

            data = tf.wait(run_id, timeout=timeout, on_progress=both)
    if data["state"] == RunState.BLOCKED:
        click.echo(_blocked_advice(data), err=True)
    elif data["state"] not in RUN_SETTLED:
        click.echo(f"run {run_id} still {data['state']} after {timeout:g}s", err=True)
    return data


def _blocked_advice(data: dict[str, Any]) -> str:
    run_id = data["id"]
    return (f"run {run_id} is blocked (it waits for a person, not for time): {' '.join(str(data['error']).split())}"
            f" | check a fix with 'tideflow run replay {run_id}', deploy it, then 'tideflow run resume {run_id}'")


@run.command("show")
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def run_show(run_id: int, as_json: bool) -> None:
    """A run and its tasks; a code run also its result and published state (``state_values``)."""
    _emit(_client().run(run_id), as_json, _render_run)


def _render_run(d: dict[str, Any]) -> None:
    console.print(tasks_table(d))
    # limits (app/services/limits.py): why a queued run, or a task held back, has not started
    if d.get("waiting_for"):
        click.echo(f"queued: waiting for {d['waiting_for']}")
    for t in d["tasks"]:
        if t.get("waiting_for"):
            click.echo(f"{t['name']}: waiting for {t['waiting_for']}")
    if d["error"]:
        click.echo(f"error: {d['error']}")
    if d.get("schedule"):
        click.echo(f"scheduled by {d['schedule']} for {d['schedule_time']}")
    if d["state"] == RunState.PAUSED:
        click.echo(f"paused: no new task starts until 'tideflow run resume {d['id']}'")
    if d.get("kind") != RunKind.CODE:
        return
    if d["state"] == RunState.SUCCEEDED:
        click.echo(f"result: {json.dumps(d['result'], sort_keys=True)}")
    if d["state_values"]:
        click.echo(f"state_values: {json.dumps(d['state_values'], sort_keys=True)}")
    if d["continued_run_id"]:
        click.echo(f"continued as new: run {d['continued_run_id']}")
    if d.get("superseded_steps"):
        click.echo(f"{len(d['superseded_steps'])} step(s) superseded by resets (task rerun / force-success): kept, "
                   "marked (superseded) above")
    if d["cancel_requested"] and d["state"] not in RUN_TERMINAL:
        click.echo("cancel requested")


@run.command("list")
@click.option("--state", type=click.Choice([str(st) for st in RunState]))
@click.option("--kind", type=click.Choice([str(k) for k in RunKind]), help="dag or code runs only")
@click.option("--workflow")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def run_list(state: str | None, kind: str | None, workflow: str | None, limit: int, as_json: bool) -> None:
    rows = _read(views.list_runs, state=state, workflow=workflow, limit=limit, kind=kind)

    def render(rows: list[dict[str, Any]]) -> None:
        t = Table("id", "workflow", "state", "priority", "created", "duration")
        for r in rows:
            t.add_row(str(r["id"]), r["workflow"], styled(r["state"]), str(r["priority"]), r["created_at"],
                      f"{r['duration']:.2f}s" if r["duration"] is not None else "")
        console.print(t)

    _emit(rows, as_json, render)


@run.command("history")
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def run_history(run_id: int, as_json: bool) -> None:
    rows = _read(views.run_history, run_id)

    def render(rows: list[dict[str, Any]]) -> None:
        t = Table("at", "task", "attempt", "from", "to", "by", "why")
        for r in rows:
            t.add_row(r["at"][11:23], r["task"] or "(run)", str(r["attempt"] or ""), r["from"] or "",
                      styled(r["to"]), r["actor"], r["reason"])
        console.print(t)

    _emit(rows, as_json, render)


@run.command("cancel")
@click.argument("run_id", type=int)
def run_cancel(run_id: int) -> None:
    """Cancel a run: a DAG run's live tasks stop; a code run's current wait raises ``tideflow.Cancelled`` (its
    ``finally`` blocks and compensations run before it ends) and its children are cancelled."""
    tf = _client()
    tf.cancel(run_id)
    state = tf.run(run_id)["state"]
    if state in RUN_TERMINAL:
        click.echo(f"cancelled run {run_id}" + ("" if state == RunState.CANCELLED else f" (it ended {state})"))
    else:
        click.echo(f"cancel requested for run {run_id}: tideflow.Cancelled is raised at its current wait "
                   f"(now {state}; its compensations run before it ends)")


@run.command("signal")
@click.argument("run_id", type=int)
@click.argument("name")
@click.option("--data", "data", help="the signal's data, JSON (default: null)")
@click.option("--key", help="idempotency key: the same key twice delivers once")
def run_signal(run_id: int, name: str, data: str | None, key: str | None) -> None:
    """Send signal NAME to a code run (its ``ctx.wait_signal(NAME)`` returns the data); kept until it waits."""
    from app.code.runs import send_signal

    try:
        payload = json.loads(data) if data is not None else None
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON ({exc})", param_hint="--data") from None
    tf = _client()
    with tf.runtime.db.transaction() as s:
        signal_id, created = send_signal(s, tf.runtime, run_id, name, payload, key=key, actor="cli")
    if created:
        click.echo(f"sent signal '{name}' #{signal_id} to run {run_id}")
    else:
        click.echo(f"signal '{name}' with key '{key}' was already sent to run {run_id} (#{signal_id}); not sent again")


@run.command("pause")
@click.argument("run_id", type=int)
def run_pause(run_id: int) -> None:
    """Pause a running run: no new task starts (a code run is not replayed) until ``run resume``; tasks already
    running finish."""
    _client().pause(run_id, actor="cli")
    click.echo(f"paused run {run_id}: no new task starts until 'tideflow run resume {run_id}'")


@run.command("resume")
@click.argument("run_id", type=int)
def run_resume(run_id: int) -> None:
    """Continue a paused run, or a ``blocked`` code run with the code deployed now (exit 1 if it is blocked
    again)."""
    tf = _client()
    was, state = tf.resume_from(run_id, actor="cli")
    if state == RunState.BLOCKED:
        click.echo(f"error: run {run_id} is still blocked: {' '.join(str(tf.run(run_id)['error']).split())}",
                   err=True)
        sys.exit(1)
    click.echo(f"resumed {was} run {run_id} (now {state})")


@run.command("replay")
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def run_replay(run_id: int, as_json: bool) -> None:
    """Replay a code run's stored history against the code this process imports, with no side effects: exit 0 if
    it replays, 1 with the first divergence if it does not (check a change before deploying it)."""
    report = _client().replay(run_id)
    data = {"run_id": report.run_id, "workflow": report.workflow, "steps": report.steps,
            "positions": report.positions, "outcome": report.outcome, "ok": report.ok,
            "divergence": report.divergence}
    _emit(data, as_json, lambda _d: click.echo(("ok: " if report.ok else "diverged: ") + str(report)))
    sys.exit(0 if report.ok else 1)


@run.command("retry")
@click.argument("run_id", type=int)
def run_retry(run_id: int) -> None:
    n = _client().retry(run_id)
    click.echo(f"retrying run {run_id} ({n} task(s) reset)")


# -- tasks ------------------------------------------------------------------------------------------
@cli.group(cls=_Group)
def task() -> None:
    """Task runs."""


@task.command("logs")
@click.argument("ids", nargs=-1, required=True, metavar="RUN TASK")
@click.option("--json", "as_json", is_flag=True)
def task_logs(ids: tuple[str, ...], as_json: bool) -> None:
    """Each attempt's output and error of run RUN's task TASK (its name, or its task run id, as ``run show``
    lists it); ``task logs TASK_RUN_ID`` alone takes the id."""
    if len(ids) > 2 or not ids[0].isdigit():
        raise click.UsageError("expected RUN TASK (a run id, then a task name or task run id) or TASK_RUN_ID")
    data = (_read(views.task_logs, int(ids[0])) if len(ids) == 1
            else _read(views.run_task_logs, int(ids[0]), ids[1]))

    def render(d: dict[str, Any]) -> None:
        for a in d["attempts"]:
            console.rule(f"{d['name']} attempt {a['attempt']} · {a['outcome']} · {a['worker']}")
            click.echo(a["log"].rstrip())
            if a["error"]:
                click.echo(f"error: {a['error']}")

    _emit(data, as_json, render)


@task.command("force-success")
@click.argument("run_id", metavar="RUN", type=int)
@click.argument("task_ref", metavar="TASK")
@click.option("--result", "result_json", default=None, metavar="JSON",
              help="the task's result (JSON; default null): a code run's ctx.activity returns it")
@click.option("--reason", default="by request", show_default=True, help="recorded in the run's history")
def task_force_success(run_id: int, task_ref: str, result_json: str | None, reason: str) -> None:
    """Mark run RUN's failed task TASK succeeded (its name or task run id; a code run's step also by its position,
    #N): a DAG's downstream tasks continue, a code run is replayed with RESULT at that step; a failed run is
    running again."""
    try:
        result = json.loads(result_json) if result_json is not None else None
    except ValueError as exc:
        raise click.UsageError(f"--result must be JSON: {exc}") from None
    tf = _client()
    task_run_id = tf.task_id(run_id, task_ref)
    _, state = tf.force_success(task_run_id, actor="cli", reason=reason, result=result)
    click.echo(f"task {task_ref} (task run {task_run_id}) of run {run_id} forced to success (run now {state})")


@task.command("rerun")
@click.argument("run_id", metavar="RUN", type=int)
@click.argument("task_ref", metavar="TASK")
def task_rerun(run_id: int, task_ref: str) -> None:
    """Run finished run RUN again from its task TASK (its name or task run id; a code run's step also by its
    position, #N): a DAG's task and everything downstream of it run as new attempts; a code run is reset to that
    step: it and every later step are superseded (kept) and run anew. Earlier attempts stay in the history."""
    tf = _client()
    task_run_id = tf.task_id(run_id, task_ref)
    _, state, reset = tf.rerun(task_run_id, actor="cli")
    what = "step(s) superseded" if tf.run(run_id)["kind"] == "code" else "task(s) reset"
    click.echo(f"rerunning run {run_id} from task {task_ref} ({reset} {what}; run now {state})")


# -- tokens -----------------------------------------------------------------------------------------
@cli.group(cls=_Group)
def token() -> None:
    """Named API tokens with roles (viewer, operator, admin) for the REST API and the web UI."""


@token.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True,
              help="viewer: read; operator: also start, cancel, retry, signal, resume; admin: also register")
def token_add(name: str, role: str) -> None:
    """Make token NAME (the actor in run histories) and print its secret: the only time it is shown (only a
    hash of it is stored)."""
    from app.services.tokens import add_token

    with _client().runtime.db.transaction() as s:
        secret = add_token(s, name, role)
    click.echo(f"added token {name} ({role}); its secret, shown only now:", err=True)
    click.echo(secret)


@token.command("list")
@click.option("--json", "as_json", is_flag=True)
def token_list(as_json: bool) -> None:
    """The named tokens (not their secrets, which are not stored)."""
    rows = _read(views.list_tokens)

    def render(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("no named tokens (tideflow token add NAME --role ROLE)")
            return
        t = Table("name", "role", "created")
        for r in rows:
            t.add_row(r["name"], r["role"], (r["created_at"] or "")[:19].replace("T", " "))
        console.print(t)

    _emit(rows, as_json, render)


@token.command("remove")
@click.argument("name")
def token_remove(name: str) -> None:
    """Remove token NAME: its secret and the UI sessions opened with it stop working at once."""
    from app.services.tokens import remove_token

    with _client().runtime.db.transaction() as s:
        remove_token(s, name)
    click.echo(f"removed token {name}")


# -- schedules --------------------------------------------------------------------------------------
@cli.group(cls=_Group)
def schedule() -> None:
    """Cron schedules of workflows (declared in a DAG's ``schedule:`` or ``@tideflow.workflow(schedule=...)``)."""


def _when(iso: str | None) -> str:
    return (iso or "")[:19].replace("T", " ")


@schedule.command("list")
@click.option("--workflow", help="only this workflow's schedules")
@click.option("--json", "as_json", is_flag=True)
def schedule_list(workflow: str | None, as_json: bool) -> None:
    """Every schedule: name, workflow, cron, what it means, its next 3 fire times (UTC), paused."""
    rows = _client().schedules(workflow)

    def render(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("no schedules (declare one: schedule: {cron: ...} in a DAG, or "
                       "@tideflow.workflow(schedule=...))")
            return
        t = Table("name", "workflow", "cron", "means", "next (UTC)", "paused")
        for r in rows:
            t.add_row(r["name"], r["workflow"], r["cron"] + ("" if r["timezone"] == "UTC" else f" ({r['timezone']})"),
                      r["description"], "\n".join(_when(n) for n in r["next"]) or "-",
                      "yes" if r["paused"] else "no")
        console.print(t)

    _emit(rows, as_json, render)


@schedule.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def schedule_show(name: str, as_json: bool) -> None:
    """A schedule's recent fire times: the run each started, or why it was skipped; and its backfills."""
    data = _client().schedule(name)

    def render(d: dict[str, Any]) -> None:
        click.echo(f"{d['name']} ({d['workflow']}): {d['cron']} {d['timezone']}: {d['description']}; catchup "
                   f"{d['catchup']}, overlap {d['overlap']}"
                   + (f", PAUSED by {d['paused_by']} at {_when(d['paused_at'])}" if d["paused"] else ""))
        t = Table("fire time (UTC)", "outcome", "run", "why")
        for f in d["last"]:
            t.add_row(_when(f["fire_time"]), f["outcome"], str(f["run_id"] or ""), f["reason"])
        console.print(t)
        for b in d["backfills"]:
            click.echo(f"backfill {b['id']} {_when(b['from'])} .. {_when(b['to'])} parallel {b['parallel']}: "
                       f"{b['state']} ({b['done']} done, {b['live']} running, {b['pending']} waiting)")

    _emit(data, as_json, render)


@schedule.command("pause")
@click.argument("name")
def schedule_pause(name: str) -> None:
    """Stop firing NAME (runs already started go on)."""
    _client().pause_schedule(name, actor="cli")
    click.echo(f"paused schedule {name}")


@schedule.command("resume")
@click.argument("name")
def schedule_resume(name: str) -> None:
    """Fire NAME again, from now (the fire times of the pause are not caught up: backfill them if needed)."""
    _client().resume_schedule(name, actor="cli")
    click.echo(f"resumed schedule {name}")


@schedule.command("trigger")
@click.argument("name")
def schedule_trigger(name: str) -> None:
    """Start a run of NAME now (its logical time: now)."""
    run_id = _client().trigger_schedule(name, actor="cli")
    click.echo(f"started run {run_id}")


def _iso(_ctx: Any, param: Any, value: str) -> Any:
    from datetime import datetime

    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not an ISO 8601 time (e.g. 2026-01-01T00:00:00Z)") from None
    if parsed.tzinfo is None:
        raise click.BadParameter(f"'{value}' needs a UTC offset (e.g. 2026-01-01T00:00:00Z)")
    return parsed


@schedule.command("backfill")
@click.argument("name")
@click.option("--from", "start", required=True, callback=_iso, help="first fire time included (ISO 8601)")
@click.option("--to", "end", required=True, callback=_iso, help="last fire time included (ISO 8601)")
@click.option("--parallel", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="at most this many of its runs at once")
@click.option("--dry-run", is_flag=True, help="list the fire times; start nothing")
@click.option("--json", "as_json", is_flag=True)
def schedule_backfill(name: str, start: Any, end: Any, parallel: int, dry_run: bool, as_json: bool) -> None:
    """One run per fire time of NAME from --from to --to, oldest first, at most --parallel at once. Durable: beat's
    scheduler pass submits them as runs finish, also after this command exits (progress: schedule show NAME).
    Fire times that already have a run (or were skipped) are left alone: running it again creates nothing new."""
    data = _client().backfill(name, start, end, parallel=parallel, dry_run=dry_run, actor="cli")

    def render(d: dict[str, Any]) -> None:
        total, new = len(d["fire_times"]), len(d["new"])
        if d["dry_run"]:
            click.echo(f"would start {new} run(s) of {total} fire time(s) ({d['existing']} already recorded), "
                       f"at most {d['parallel']} at once:")
            for t in d["new"]:
                click.echo(f"  {_when(t)}")
        elif not new:
            click.echo(f"backfill {d['backfill']}: nothing new: all {total} fire time(s) are recorded already")
        else:
            click.echo(f"backfill {d['backfill']}: {new} run(s) queued ({d['existing']} of {total} fire time(s) "
                       f"recorded already), at most {d['parallel']} at once; progress: tideflow schedule show {name}")

    _emit(data, as_json, render)


# -- pools (app/services/limits.py) -----------------------------------------------------------------
@cli.group(cls=_Group)
def pool() -> None:
    """Pools of slots: at most SLOTS tasks naming a pool (``pool: NAME``) run at once, cluster-wide."""


def _pools_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no pools (tideflow pool set NAME SLOTS)")
        return
    t = Table("name", "slots", "running", "waiting", "free", "rate limit")
    for r in rows:
        t.add_row(r["name"], str(r["slots"]), str(r["running"]), str(r["waiting"]), str(r["free"]),
                  r["rate_limit"] or "-")
    console.print(t)


@pool.command("set")
@click.argument("name")
@click.argument("slots", type=click.IntRange(0, None))
@click.option("--rate-limit", default=None, help="at most N of its tasks start per second/minute/hour: N/s, N/m, N/h")
@click.option("--json", "as_json", is_flag=True)
def pool_set(name: str, slots: int, rate_limit: str | None, as_json: bool) -> None:
    """Create pool NAME with SLOTS slots, or resize it (tasks waiting that now fit start)."""
    _emit(_client().set_pool(name, slots, rate_limit=rate_limit), as_json, lambda r: _pools_table([r]))


@pool.command("list")
@click.option("--json", "as_json", is_flag=True)
def pool_list(as_json: bool) -> None:
    """Every pool with its slots in use and its waiting tasks."""
    _emit(_client().pools(), as_json, _pools_table)


# -- operations -------------------------------------------------------------------------------------
@cli.command("reconcile")
@click.option("--json", "as_json", is_flag=True)
def reconcile(as_json: bool) -> None:
    """Run one reconciler pass now (beat runs it every TIDEFLOW_RECONCILE_INTERVAL_SECONDS)."""
    from app.services.reconciler import reconcile_once

    report = reconcile_once(_client().runtime)
    _emit(report.__dict__, as_json, lambda _d: click.echo(str(report)))


@cli.command("web")
@click.option("--host", help="default: TIDEFLOW_WEB_HOST (127.0.0.1)")
@click.option("--port", type=int, help="default: TIDEFLOW_WEB_PORT (8000)")
def web(host: str | None, port: int | None) -> None:
    """Serve the REST API, the web UI and /metrics (uvicorn; stops cleanly on SIGTERM)."""
    import uvicorn

    from app.api.app import create_app

    settings = load_settings()
    uvicorn.run(create_app(settings), host=host or settings.web_host, port=port or settings.web_port,
                log_level="info", proxy_headers=True, server_header=False)


def _basic_auth_ok(value: str) -> bool:
    """``user:password`` pairs, comma separated (Flower splits the variable on commas and compares each pair
    with the decoded ``Authorization: Basic`` credentials as a whole string)."""
    pairs = value.split(",")
    return all(user and password and pair == pair.strip() and ":" not in user
               for pair in pairs for user, _, password in [pair.partition(":")])


@cli.command("flower")
def flower() -> None:
    """Start Flower (celery -A tasks flower); refuses to without FLOWER_BASIC_AUTH.

    Flower itself reads its options from ``FLOWER_*`` environment variables: ``FLOWER_BASIC_AUTH``
    (``user:password[,user2:password2]``), ``FLOWER_PORT`` (default 5555) and ``FLOWER_ADDRESS`` (here
    127.0.0.1 unless set; Flower's own default would be every interface). It is exec'ed, so it is the process
    that receives SIGTERM, and it switches the workers' task events on while it runs."""
    require("flower", "flower")  # the `flower` extra (pyproject.toml); `celery flower` does not exist without it
    auth = os.environ.get("FLOWER_BASIC_AUTH", "")
    if not _basic_auth_ok(auth):
        click.echo("error: set FLOWER_BASIC_AUTH=user:password (comma separated for several users); "
                   "Flower does not start without authentication", err=True)
        sys.exit(1)
    # Flower 2.2 reads every FLOWER_<OPTION> variable itself, so nothing secret goes on a command line:
    # flower/command.py:61-78 apply_env_options (the name after the prefix, lower-cased, is the option; a
    # multiple option such as basic_auth, flower/options.py:22, is split on ',' at command.py:71-72), called at
    # command.py:39 before the command line is parsed (command.py:40, which wins). Port and address default to
    # 5555 and '' (every interface) at options.py:10-13. Basic auth compares each stored "user:password" with the
    # decoded credentials (flower/views/__init__.py:127-145). SIGTERM: command.py:25-27,49 (clean exit 0).
    os.environ.setdefault("FLOWER_ADDRESS", "127.0.0.1")
    sys.stdout.flush()
    sys.stderr.flush()
    # --persistent=False (options.py:36): no state file; Flower rebuilds its view from the events it receives.
    # The same interpreter (not whatever `celery` is first on PATH), replacing this process: no wrapper left.
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "tasks", "flower", "--persistent=False"])


@cli.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), default=".tideflow/demo", show_default=True)
def demo(workdir: str) -> None:
    """Run the example workflow end to end on embedded defaults (SQLite + an embedded Redis)."""
    from app.demo import run_demo

    sys.exit(run_demo(workdir))


if __name__ == "__main__":
    main()
