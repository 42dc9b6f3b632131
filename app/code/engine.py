"""The replay engine: run a code workflow's function from the top against its recorded history.

Each durable call of :class:`Context` (an activity, a timer, a signal wait, a child, ``now``/``uuid4``/``random``,
a patch marker) takes the next *position*. A position the history holds returns its recorded result (or re-raises
its recorded error) without doing anything; the first call the history does not hold is *recorded* (a
:class:`NewStep` the caller stores and acts on), and the first call that must wait for something not done yet
*suspends* the function. This module is pure: it reads a history and returns what one pass asked for; the
decider (``app.code.decider``) stores it, and the replay check (``app.code.replay``) only compares.

Suspending is an exception the function cannot catch with ``except Exception`` (:class:`_Suspend` is a
``BaseException``). Once suspended, any further durable call suspends again and records nothing, so ``finally``
blocks that run while the function unwinds change nothing.

Determinism: if the code asks at a position for a different call than the history holds (kind or name), the pass
ends :attr:`PassOutcome.DIVERGED` with a message naming the position, what the history holds and what the code
asked for; the run is then ``blocked`` (never retried in a loop, never changed) until ``run resume``.
"""

from __future__ import annotations

import json
import math
import random as _random
import re
import uuid as _uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NoReturn

from app.code.registry import ActivityDef, WorkflowDef, activity_def, workflow_name
from app.errors import TideflowError
from app.services.limits import activity_key
from app.states import TaskKind, TaskState
from app.templating import TemplateError


class WorkflowError(TideflowError):
    """Base of the errors a durable call raises inside a workflow."""


class ActivityError(WorkflowError):
    """An activity failed past its retries (or its lost-attempt budget). ``type`` and ``message`` are its cause's:
    the exception type's name and its message, as the worker recorded them."""

    def __init__(self, activity: str, error: str):
        self.activity = activity
        self.error = error
        head, sep, tail = error.partition(": ")
        if sep and head.isidentifier():
            self.type, self.message = head, tail
        elif error.startswith("timed out after"):  # the lease keeper stopped it at its timeout
            self.type, self.message = "TimeoutError", error
        elif "attempts lost" in error or "lost:" in error:  # its lost-attempt budget ran out
            self.type, self.message = "LostAttempts", error
        else:
            self.type, self.message = "Error", error
        super().__init__(f"activity '{activity}' failed: {error}")


class ChildWorkflowError(WorkflowError):
    """A child run ended failed (or cancelled, when the parent did not ask for it)."""

    def __init__(self, workflow: str, error: str):
        self.workflow = workflow
        self.error = error
        super().__init__(f"child workflow '{workflow}' failed: {error}")


class Cancelled(WorkflowError):  # noqa: N818 - the public name (tideflow.Cancelled)
    """The run was cancelled: raised at the workflow's current wait, so ``try/finally`` and compensating
    activities run. Re-raise it (or let it propagate) to end the run ``cancelled``."""


class NotJSON(TideflowError, TypeError):  # noqa: N818 - reads as what it says at the call site
    """A value that crosses the history (an argument, a result, a signal's data) is not JSON."""


class _Suspend(BaseException):  # noqa: N818 - control flow, never seen by users
    """The function must wait: the pass ends here."""


class _Diverged(BaseException):  # noqa: N818
    def __init__(self, message: str):
        self.message = message


class _ContinueAsNew(BaseException):  # noqa: N818
    def __init__(self, params: dict[str, Any]):
        self.params = params


@dataclass(frozen=True)
class Step:
    """What the history holds at one position (a step row of the run)."""

    seq: int
    kind: TaskKind
    name: str
    state: TaskState
    result: Any = None
    error: str | None = None
    task_run_id: int | None = None
    child_run_id: int | None = None

    @property
    def done(self) -> bool:
        return self.state in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.SKIPPED)


def step_name(row_name: str) -> str:
    """A step row is named ``<name>#<seq>`` (unique in its run); the name alone is what replay compares."""
    return row_name.rpartition("#")[0] or row_name


def describe(kind: TaskKind | str, name: str) -> str:
    kind = TaskKind(kind)
    if kind == TaskKind.ACTIVITY:
        return f"activity '{name}'"
    if kind == TaskKind.TIMER:
        return "a timer (ctx.sleep)"
    if kind == TaskKind.SIGNAL:
        return f"a wait for signal '{name}'"
    if kind == TaskKind.SUBWORKFLOW:
        return f"child workflow '{name}'"
    return f"ctx.{name}()" if not name.startswith("patch:") else f"patch marker '{name[6:]}'"


#: the divergence messages :meth:`Context._next` and :func:`_check_tail` write (a blocked run's ``error`` holds one):
#: read back by :func:`parse_divergence`, next to the code that writes them so the two change together
_DIVERGENCE = re.compile(
    r"position (?P<position>\d+): the history (?:holds (?P<history>.+?)|(?P<ends>ends) \(the run finished\)), "
    r"the code (?:asked for (?P<asked>.+?)|(?P<stopped>returned|ended) before it)(?=\. The run is kept|$)")


def parse_divergence(message: str | None) -> dict[str, Any]:
    """A blocked run's divergence, from its message: ``position`` (int), what the ``history`` holds there and
    what the code ``asked`` for, in words (None when the message names no position: e.g. a workflow this process
    does not have)."""
    m = _DIVERGENCE.search(message or "")
    if m is None:
        return {"position": None, "history": None, "asked": None}
    history = m["history"] if m["ends"] is None else "nothing (the run had finished)"
    asked = m["asked"] if m["stopped"] is None else f"nothing (the code {m['stopped']} before it)"
    return {"position": int(m["position"]), "history": history, "asked": asked}


@dataclass
class NewStep:
    """A durable call recorded by this pass: the decider inserts it as a step row in ``state``."""

    seq: int
    kind: TaskKind
    name: str
    state: TaskState  # pending (an activity or child to start), running (a timer, a signal wait), or born done
    body: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    due_at: datetime | None = None
    signal_id: int | None = None  # the stored signal this wait consumed
    activity: ActivityDef | None = None
    reason: str = ""
    #: an activity's rendered concurrency key (``@tideflow.activity(concurrency=...)``)
    concurrency_key: str | None = None
    #: why a step born failed failed (an activity whose concurrency key does not render)
    failure: str | None = None

    @property
    def done(self) -> bool:
        return self.state in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)

    @property
    def error(self) -> str | None:
        if self.state == TaskState.FAILED:
            return self.failure or "failed"
        return "cancelled" if self.state == TaskState.CANCELLED else None


class PassOutcome(StrEnum):
    SUSPENDED = "suspended"  # waiting for something (recorded steps to act on, or steps still running)
    RETURNED = "returned"  # the function returned ``value``
    FAILED = "failed"  # the function raised ``error`` (not Cancelled)
    CANCELLED = "cancelled"  # the function let ``Cancelled`` propagate
    CONTINUE_AS_NEW = "continue_as_new"  # ``ctx.continue_as_new(**params)``
    DIVERGED = "diverged"  # the code asked for another call than the history holds: block the run


@dataclass
class PassResult:
    outcome: PassOutcome
    new_steps: list[NewStep]
    state_values: dict[str, Any]
    positions: int  # how many positions the function reached
    value: Any = None
    error: str = ""
    params: dict[str, Any] | None = None  # continue_as_new's


def to_json(value: Any, what: str) -> Any:
    """``value`` as it will read back from the history (JSON round trip); :class:`NotJSON` naming ``what``."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise NotJSON(f"{what} must be JSON: {type(value).__name__} is not ({exc})") from None


def is_plain_json(value: Any, depth: int = 0) -> bool:
    """True if ``value`` is made only of what JSON round-trips unchanged (str, int, finite float, bool, None, lists,
    dicts with str keys): the cheap check of a replayed call's arguments, which are checked but not used (anything
    else takes :func:`to_json`'s round trip, which says what is wrong)."""
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return True
    if t is float:
        return math.isfinite(value)
    if depth > 50:
        return False
    if t is list:
        return all(is_plain_json(v, depth + 1) for v in value)
    if t is dict:
        return all(type(k) is str and is_plain_json(v, depth + 1) for k, v in value.items())
    return False


class Handle:
    """A durable call started without waiting (``ctx.start_activity``, ``ctx.start_child``)."""

    def __init__(self, ctx: Context, seq: int, label: str):
        self._ctx = ctx
        self.seq = seq
        self.label = label

    def done(self) -> bool:
        return self._ctx._is_done(self.seq)

    def result(self) -> Any:
        """Its result (suspends until it is done); raises its error."""
        return self._ctx._await(self.seq)

    def __repr__(self) -> str:
        return f"<Handle {self.label} at position {self.seq}>"


#: Signals not delivered yet, oldest first: (signal id, name, data).
PendingSignal = tuple[int, str, Any]


class Context:
    """What a workflow function gets as its first argument: every durable call goes through it."""

    def __init__(
        self, *, run_id: int, workflow: str, params: Mapping[str, Any], history: Sequence[Step], now: datetime,
        signals: Sequence[PendingSignal] | Callable[[], Sequence[PendingSignal]] = (),
        cancel_requested: bool = False,
        state_values: Mapping[str, Any] | None = None,
        schedule_time: datetime | None = None,
    ):
        self.run_id = run_id
        #: the run's logical time: the fire time of the schedule that started it (a backfill's too), else when it
        #: was started; stored with the run, so every replay sees the same value (use it, never ``datetime.now``)
        self.schedule_time = schedule_time
        self.workflow = workflow
        self.params = dict(params)
        self._history = {st.seq: st for st in history}
        self._length = len(history)
        self._now = now
        # the pending signals, or how to read them: read only when a pass reaches a new signal wait
        self._signals_source = signals
        self._signals: list[PendingSignal] | None = None if callable(signals) else list(signals)
        self._pos = 0
        self._new: dict[int, NewStep] = {}
        self._suspended = False
        # a cancel request not yet delivered: the next wait is born cancelled (the service cancelled every live
        # step when the request came; this covers a request that came while nothing was waiting)
        self._cancel_pending = cancel_requested and not any(
            st.state == TaskState.CANCELLED for st in history)
        self.state_values: dict[str, Any] = dict(state_values or {})
        #: ``{{ params.NAME }}`` of activities' concurrency keys: the run's parameters, the function's defaults
        #: under them (:func:`run_pass` sets them)
        self._key_params: dict[str, Any] = dict(params)

    # -- what the engine reads back -----------------------------------------------------------------------------

    @property
    def is_replaying(self) -> bool:
        """True while the function re-runs positions the history already holds."""
        return self._pos < self._length

    @property
    def new_steps(self) -> list[NewStep]:
        return [self._new[k] for k in sorted(self._new)]

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _next(self, kind: TaskKind, name: str) -> tuple[int, Step | None]:
        if self._suspended:
            raise _Suspend
        seq = self._pos
        self._pos += 1
        step = self._history.get(seq)
        if step is not None and (step.kind, step.name) != (kind, name):
            raise _Diverged(f"position {seq}: the history holds {describe(step.kind, step.name)}, the code asked "
                            f"for {describe(kind, name)}")
        return seq, step

    def _record(self, step: NewStep) -> None:
        self._new[step.seq] = step

    def _lookup(self, seq: int) -> Step | NewStep:
        return self._history.get(seq) or self._new[seq]

    def _is_done(self, seq: int) -> bool:
        return self._lookup(seq).done

    def _suspend(self) -> NoReturn:
        self._suspended = True
        raise _Suspend

    def _await(self, seq: int) -> Any:
        if self._suspended:
            raise _Suspend
        step = self._lookup(seq)
        if not step.done:
            self._suspend()
        return self._outcome(step)

    def _outcome(self, step: Step | NewStep) -> Any:
        if step.state == TaskState.SUCCEEDED:
            return step.result
        if step.state in (TaskState.CANCELLED, TaskState.SKIPPED):
            self._cancel_pending = False
            raise Cancelled(f"cancelled at position {step.seq} ({describe(step.kind, step.name)})")
        error = step.error or "failed"
        if step.kind == TaskKind.ACTIVITY:
            raise ActivityError(step.name, error)
        if step.kind == TaskKind.SUBWORKFLOW:
            raise ChildWorkflowError(step.name, error)
        raise WorkflowError(f"position {step.seq} ({describe(step.kind, step.name)}) failed: {error}")

    def _born(self, state: TaskState) -> TaskState:
        """A new wait's initial state: cancelled while a cancel request is pending."""
        return TaskState.CANCELLED if self._cancel_pending else state

    # -- activities ------------------------------------------------------------------------------------------------

    def start_activity(self, fn: Any, /, *args: Any, **kwargs: Any) -> Handle:
        """Start an activity and go on; ``handle.result()`` (or :meth:`gather`) waits for it."""
        adef = activity_def(fn)
        if self._suspended:
            raise _Suspend
        argv: Any = args
        kw: Any = kwargs
        # a replayed call's arguments are only checked (cheaply when plain): a long history replays many of them
        if self._pos not in self._history or not (is_plain_json(list(args)) and is_plain_json(kwargs)):
            argv = to_json(list(args), f"the arguments of activity '{adef.name}'")
            kw = to_json(dict(kwargs), f"the arguments of activity '{adef.name}'")
        seq, step = self._next(TaskKind.ACTIVITY, adef.name)
        if step is None:
            new = NewStep(seq, TaskKind.ACTIVITY, adef.name, self._born(TaskState.PENDING),
                          body={"activity": adef.name, "argv": argv, "args": kw}, activity=adef)
            if adef.concurrency is not None and new.state == TaskState.PENDING:
                try:  # rendered once, now: the step row carries it (replay never renders it again)
                    new.concurrency_key = activity_key(adef.concurrency, adef.fn, argv, kw, self._key_params)
                except TemplateError as exc:  # this call's activity fails without running (recorded: replays)
                    new.state = TaskState.FAILED
                    new.failure = (f"TemplateError: concurrency key {adef.concurrency.key!r} of activity "
                                   f"'{adef.name}' does not render: {exc}")
                    new.reason = f"position {seq}: activity '{adef.name}' failed without running: {new.failure}"
            self._record(new)
        return Handle(self, seq, f"activity '{adef.name}'")

    def activity(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Run an activity (a worker runs it as a Celery task) and return its result; raises
        :class:`ActivityError` when it failed past its retries."""
        return self.start_activity(fn, *args, **kwargs).result()

    def gather(self, *handles: Handle, return_exceptions: bool = False) -> list[Any]:
        """Wait for all ``handles``; their results in order. When some failed, the error of the first failed one
        in argument order is raised once all are done (deterministic whatever order they finished in), or, with
        ``return_exceptions``, errors are returned in place of results."""
        if self._suspended:
            raise _Suspend
        if not all(self._is_done(h.seq) for h in handles):
            self._suspend()
        out: list[Any] = []
        for h in handles:
            try:
                out.append(self._outcome(self._lookup(h.seq)))
            except WorkflowError as exc:
                if not return_exceptions:
                    raise
                out.append(exc)
        return out

    # -- timers and signals ----------------------------------------------------------------------------------------

    def sleep(self, seconds: float) -> None:
        """A durable timer: the run holds no worker while it sleeps; the reconciler fires it when it is due, also
        after every process was down over it."""
        if self._suspended:
            raise _Suspend
        seconds = float(seconds)
        seq, step = self._next(TaskKind.TIMER, "sleep")
        if step is None:
            due = self._now + timedelta(seconds=max(seconds, 0.0))
            state = TaskState.SUCCEEDED if seconds <= 0 else self._born(TaskState.RUNNING)
            self._record(NewStep(seq, TaskKind.TIMER, "sleep", state, body={"seconds": seconds},
                                 due_at=due if state == TaskState.RUNNING else None,
                                 reason=f"sleeping {seconds:g}s, until {due:%Y-%m-%d %H:%M:%S} UTC"))
        self._await(seq)

    def wait_signal(self, name: str, timeout: float | None = None) -> Any:
        """Wait for the next signal ``name`` sent to this run and return its data (``None`` on timeout). Signals
        sent before the wait are kept; each is delivered once, in arrival order."""
        if self._suspended:
            raise _Suspend
        seq, step = self._next(TaskKind.SIGNAL, name)
        if step is None:
            if self._signals is None:
                source = self._signals_source
                self._signals = list(source() if callable(source) else source)
            pending = next((sig for sig in self._signals if sig[1] == name), None)
            body: dict[str, Any] = {"signal": name, "timeout": timeout}
            if pending is not None and not self._cancel_pending:
                self._signals.remove(pending)
                self._record(NewStep(seq, TaskKind.SIGNAL, name, TaskState.SUCCEEDED, body=body, result=pending[2],
                                     signal_id=pending[0], reason=f"signal '{name}' #{pending[0]} delivered"))
            else:
                due = self._now + timedelta(seconds=timeout) if timeout is not None else None
                self._record(NewStep(seq, TaskKind.SIGNAL, name, self._born(TaskState.RUNNING), body=body,
                                     due_at=due, reason=f"waiting for signal '{name}'"
                                     + (f" until {due:%Y-%m-%d %H:%M:%S} UTC" if due else "")))
        return self._await(seq)

    # -- children --------------------------------------------------------------------------------------------------

    def start_child(self, workflow: Any, /, **params: Any) -> Handle:
        """Start a child run (a code or DAG workflow, by name or function) and go on; ``handle.result()`` waits
        for it: a code child's return value, a DAG child's task results by name."""
        name = workflow_name(workflow)
        if self._suspended:
            raise _Suspend
        p = to_json(dict(params), f"the parameters of child workflow '{name}'")
        seq, step = self._next(TaskKind.SUBWORKFLOW, name)
        if step is None:
            self._record(NewStep(seq, TaskKind.SUBWORKFLOW, name, self._born(TaskState.PENDING),
                                 body={"workflow": name, "params": p}))
        return Handle(self, seq, f"child workflow '{name}'")

    def child(self, workflow: Any, /, **params: Any) -> Any:
        """Run a child workflow and return its result; raises :class:`ChildWorkflowError` when it failed."""
        return self.start_child(workflow, **params).result()

    # -- recorded values ---------------------------------------------------------------------------------------

    def _marker(self, name: str, make: Callable[[], Any]) -> Any:
        if self._suspended:
            raise _Suspend
        seq, step = self._next(TaskKind.MARKER, name)
        if step is not None:
            return step.result
        value = make()
        self._record(NewStep(seq, TaskKind.MARKER, name, TaskState.SUCCEEDED, result=value))
        return value

    def now(self) -> datetime:
        """The current time (UTC), recorded: replay sees the same value."""
        return datetime.fromisoformat(self._marker("now", self._now.isoformat))

    def uuid4(self) -> _uuid.UUID:
        """A random UUID, recorded."""
        return _uuid.UUID(self._marker("uuid4", lambda: str(_uuid.uuid4())))

    def random(self) -> float:
        """A random float in [0, 1), recorded (``random.random()`` for workflows)."""
        return float(self._marker("random", _random.random))

    def patched(self, patch_id: str) -> bool:
        """True where the code runs a new branch: in new runs, and in old runs from the point they reach it now.
        False when replaying a history recorded before the patch (its call at this position is the old one), so
        old runs replay the old branch. Keep the old branch until no run that needs it is live."""
        if self._suspended:
            raise _Suspend
        name = f"patch:{patch_id}"
        step = self._history.get(self._pos)
        if step is None:
            self._record(NewStep(self._pos, TaskKind.MARKER, name, TaskState.SUCCEEDED, result=True))
            self._pos += 1
            return True
        if (step.kind, step.name) == (TaskKind.MARKER, name):
            self._pos += 1
            return True
        return False

    # -- the run's own state ------------------------------------------------------------------------------------

    def set_state(self, key: str, value: Any) -> None:
        """Publish a value (``run show``'s ``state_values``), readable while the run is running."""
        if not self._suspended:
            self.state_values[str(key)] = to_json(value, f"state value '{key}'")

    def continue_as_new(self, **params: Any) -> NoReturn:
        """End this run and start a fresh one of the same workflow with ``params`` (an empty history), linked to
        this one: for loops that would otherwise grow the history without bound."""
        if self._suspended:
            raise _Suspend
        raise _ContinueAsNew(to_json(dict(params), "the parameters of continue_as_new"))


class AsyncContext(Context):
    """The context of an ``async def`` workflow: the waiting calls are awaited (``await ctx.activity(...)``);
    handles are awaitable. Use ``ctx.gather`` for parallel work (it never needs an event loop)."""

    async def activity(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return Context.activity(self, fn, *args, **kwargs)

    async def gather(self, *handles: Handle, return_exceptions: bool = False) -> list[Any]:  # type: ignore[override]
        return Context.gather(self, *handles, return_exceptions=return_exceptions)

    async def sleep(self, seconds: float) -> None:  # type: ignore[override]
        Context.sleep(self, seconds)

    async def wait_signal(self, name: str, timeout: float | None = None) -> Any:  # type: ignore[override]
        return Context.wait_signal(self, name, timeout)

    async def child(self, workflow: Any, /, **params: Any) -> Any:  # type: ignore[override]
        return Context.child(self, workflow, **params)


def _handle_await(self: Handle) -> Any:
    return self.result()
    yield  # pragma: no cover - makes this a generator: ``await handle``


Handle.__await__ = _handle_await  # type: ignore[attr-defined]


def run_pass(
    wf: WorkflowDef, params: Mapping[str, Any], ctx: Context, *, finished: bool = False,
) -> PassResult:
    """Run ``wf``'s function once against ``ctx``'s history. ``finished``: the history is of a run that ended
    (the replay check): any call it does not hold is a divergence."""

    def result(outcome: PassOutcome, **kw: Any) -> PassResult:
        return PassResult(outcome, ctx.new_steps, ctx.state_values, ctx._pos, **kw)

    ctx._key_params = {**{p.name: p.default for p in wf.params if not p.required}, **params}

    try:
        value = _run_coroutine(wf.fn(ctx, **params)) if wf.is_async else wf.fn(ctx, **params)
    except _Diverged as d:
        return result(PassOutcome.DIVERGED, error=d.message)
    except _Suspend:
        return _check_tail(result(PassOutcome.SUSPENDED), ctx, finished)
    except _ContinueAsNew as c:
        return _check_tail(result(PassOutcome.CONTINUE_AS_NEW, params=c.params), ctx, finished)
    except Cancelled as exc:
        if ctx._suspended:
            return _check_tail(result(PassOutcome.SUSPENDED), ctx, finished)
        return _check_tail(result(PassOutcome.CANCELLED, error=str(exc)), ctx, finished)
    except Exception as exc:  # noqa: BLE001 - the workflow's own error ends the run failed, with its message
        if ctx._suspended:  # it swallowed a suspension and then failed: still just suspended
            return _check_tail(result(PassOutcome.SUSPENDED), ctx, finished)
        return _check_tail(result(PassOutcome.FAILED, error=f"{type(exc).__name__}: {exc}"), ctx, finished)
    if ctx._suspended:  # the function swallowed the suspension (``except BaseException``) and returned
        return _check_tail(result(PassOutcome.SUSPENDED), ctx, finished)
    try:
        value = to_json(value, f"the result of workflow '{wf.name}'")
    except NotJSON as exc:
        return _check_tail(result(PassOutcome.FAILED, error=str(exc)), ctx, finished)
    return _check_tail(result(PassOutcome.RETURNED, value=value), ctx, finished)


def _check_tail(res: PassResult, ctx: Context, finished: bool) -> PassResult:
    """A pass that ended (or suspended) must account for the whole history: if the history holds positions the
    code never reached, or a finished run's code asks for more, the code changed under the run."""
    if res.outcome == PassOutcome.DIVERGED:
        return res
    if res.outcome != PassOutcome.SUSPENDED or not res.new_steps:
        unreached = sorted(seq for seq in ctx._history if seq >= ctx._pos)
        if unreached and res.outcome != PassOutcome.SUSPENDED:
            st = ctx._history[unreached[0]]
            return PassResult(PassOutcome.DIVERGED, [], res.state_values, res.positions,
                              error=f"position {st.seq}: the history holds {describe(st.kind, st.name)}, the code "
                                    f"{'returned' if res.outcome == PassOutcome.RETURNED else 'ended'} before it")
    if finished and res.new_steps:
        first = res.new_steps[0]
        return PassResult(PassOutcome.DIVERGED, [], res.state_values, res.positions,
                          error=f"position {first.seq}: the history ends (the run finished), the code asked for "
                                f"{describe(first.kind, first.name)}")
    return res


def _run_coroutine(coro: Any) -> Any:
    """Drive an ``async def`` workflow: its awaits of ``ctx`` calls complete at once or suspend the pass, so it
    never needs an event loop (``asyncio.gather`` of ctx calls is not supported: use ``ctx.gather``)."""
    try:
        while True:
            coro.send(None)
    except StopIteration as stop:
        return stop.value
    finally:
        coro.close()

