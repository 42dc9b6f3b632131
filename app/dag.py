"""The DAG evaluator: the one narrow piece that decides a run's next step.

Pure: given the definition's dependencies, the tasks' current states and the failure strategy, it returns
a :class:`Decision`. ``app.services.deciders.DagDecider`` adapts it to the advance loop's ``Decider`` interface
(the seam a code-workflow replayer plugs into).

Trigger rules (Airflow's, ``airflow/ti_deps/deps/trigger_rule_dep.py``): each task's rule decides, from the states
of its direct upstream tasks, whether it runs, waits, or is skipped. Airflow tells a task skipped on purpose
(``skipped``) from one that never ran because something upstream failed (``upstream_failed``); here both are the
``skipped`` state, and the caller says which skipped tasks were skipped on purpose (``deliberate``: a false
``when:``, a branch a switch did not choose, a rule that skips); any other skipped task, and a cancelled one,
counts as failed, as Airflow counts ``upstream_failed``. Per rule, with the upstream tasks' states:

- ``all_success`` (default): runs when all succeeded; skipped (failed) as soon as one failed, skipped (on purpose)
  as soon as one was skipped on purpose;
- ``all_failed``: runs when all failed; skipped as soon as one succeeded or was skipped on purpose;
- ``all_done``: runs when all are finished, whatever their state; never skipped;
- ``one_success``: runs as soon as one succeeded, without waiting for the others; once all are finished with
  none succeeded, skipped (on purpose if all were skipped on purpose, else as failed);
- ``one_failed``: runs as soon as one failed, without waiting for the others; skipped once all are finished with
  none failed;
- ``none_failed``: runs when all succeeded or were skipped on purpose; skipped (failed) as soon as one failed.

A task with no upstream task runs at once, whatever its rule. A task a succeeded switch did not choose is skipped
on purpose, whatever its rule (Airflow's branch operators skip the branches they do not follow).

A run's outcome is Airflow's (``DagRun.update_state``): once no task is live, the run failed if a *leaf* task
(one nothing depends on) failed or was skipped because of a failure, and succeeded otherwise (every leaf succeeded
or was skipped on purpose). So a failure a trigger rule handles (``all_done`` clean-up, a ``one_failed`` alert
whose downstream succeeds) does not fail the run by itself; a failure whose downstream tasks are all
``all_success`` still does, through the leaves it skips.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from app.states import TASK_LIVE, RunState, TaskState


class TriggerRule(StrEnum):
    ALL_SUCCESS = "all_success"
    ALL_DONE = "all_done"
    ALL_FAILED = "all_failed"
    ONE_SUCCESS = "one_success"
    ONE_FAILED = "one_failed"
    NONE_FAILED = "none_failed"


#: rules under which a task can run although an upstream task failed: a failure with such a task downstream of it
#: is handled, and does not stop the run (``on_failure: stop``)
FAILURE_TOLERANT = frozenset({TriggerRule.ALL_DONE, TriggerRule.ALL_FAILED, TriggerRule.ONE_SUCCESS,
                              TriggerRule.ONE_FAILED})


@dataclass(frozen=True)
class Skip:
    """Why a task is skipped. ``failure``: because of a failure (Airflow's ``upstream_failed``): it counts as failed
    for the rules downstream and for the run's outcome; otherwise it was skipped on purpose."""

    reason: str
    failure: bool = False


@dataclass(frozen=True)
class Rules:
    """A workflow's branching, computed once per definition: each task's trigger rule (absent: ``all_success``),
    and the tasks whose failure a rule downstream handles."""

    trigger: Mapping[str, TriggerRule] = field(default_factory=dict)
    tolerant: frozenset[str] = frozenset()

    @classmethod
    def of(cls, deps: Mapping[str, Sequence[str]], trigger: Mapping[str, TriggerRule]) -> Rules:
        rules = {n: r for n, r in trigger.items() if r != TriggerRule.ALL_SUCCESS}
        tolerant: set[str] = set()
        # a task is tolerant when a task downstream of it (at any depth) has a failure-tolerant rule: walk up
        # from each such task once
        stack = [u for n, r in rules.items() if r in FAILURE_TOLERANT for u in deps[n]]
        while stack:
            n = stack.pop()
            if n not in tolerant:
                tolerant.add(n)
                stack.extend(deps[n])
        return cls(rules, frozenset(tolerant))

    def rule(self, name: str) -> TriggerRule:
        return self.trigger.get(name, TriggerRule.ALL_SUCCESS)


DEFAULT_RULES = Rules()


@dataclass(frozen=True)
class Decision:
    submit: list[str] = field(default_factory=list)  # pending tasks whose trigger rule is met
    skip: list[str] = field(default_factory=list)  # pending/submitted tasks that will never run
    cancel: list[str] = field(default_factory=list)  # running tasks to stop (run stops at a failure)
    outcome: RunState | None = None  # set when the run is finished
    reason: str = ""
    #: why each skipped task is skipped (by name)
    why: dict[str, Skip] = field(default_factory=dict, compare=False)

    @property
    def empty(self) -> bool:
        return not (self.submit or self.skip or self.cancel or self.outcome)


@dataclass(frozen=True)
class Facts:
    """What the evaluator knows of a run besides its tasks' states: the skipped tasks that were skipped on purpose,
    and each succeeded switch's chosen branches."""

    deliberate: Collection[str] = frozenset()
    chosen: Mapping[str, Collection[str]] = field(default_factory=dict)


NO_FACTS = Facts()


def _failed(name: str, state: TaskState, deliberate: Collection[str]) -> bool:
    """Does this finished upstream count as failed (failed, cancelled, or skipped because of a failure)?"""
    return state in (TaskState.FAILED, TaskState.CANCELLED) or (state == TaskState.SKIPPED
                                                               and name not in deliberate)


def _what(name: str, state: TaskState, deliberate: Collection[str]) -> str:
    if state == TaskState.SKIPPED:
        return "was skipped" if name in deliberate else "was skipped after a failure"
    return {TaskState.FAILED: "failed", TaskState.CANCELLED: "was cancelled"}.get(state, str(state))


def trigger(
    name: str, rule: TriggerRule, upstream: Sequence[str], states: Mapping[str, TaskState],
    facts: Facts = NO_FACTS,
) -> bool | Skip | None:
    """The task's verdict from its direct upstream tasks' states: True (run it), a :class:`Skip`, or None (wait)."""
    for u in upstream:  # a branch its switch did not choose
        chosen = facts.chosen.get(u)
        if chosen is not None and states[u] == TaskState.SUCCEEDED and name not in chosen:
            picked = ", ".join(f"'{c}'" for c in sorted(chosen)) or "no branch"
            return Skip(f"switch '{u}' chose {picked}")
    if not upstream:
        return True
    dl = facts.deliberate
    ok = [u for u in upstream if states[u] == TaskState.SUCCEEDED]
    failed = [u for u in upstream if _failed(u, states[u], dl)]
    skipped = [u for u in upstream if states[u] == TaskState.SKIPPED and u in dl]
    done = len(ok) + len(failed) + len(skipped) == len(upstream)
    prefix = f"trigger rule {rule}"
    if rule == TriggerRule.ALL_SUCCESS:
        if failed:
            return Skip(f"{prefix}: upstream '{failed[0]}' {_what(failed[0], states[failed[0]], dl)}", failure=True)
        if skipped:
            return Skip(f"{prefix}: upstream '{skipped[0]}' was skipped")
        return True if done else None
    if rule == TriggerRule.ALL_FAILED:
        if ok or skipped:
            first = next(u for u in upstream if u in ok or u in skipped)
            return Skip(f"{prefix}: upstream '{first}' {'succeeded' if first in ok else 'was skipped'}")
        return True if done else None
    if rule == TriggerRule.ALL_DONE:
        return True if done else None
    if rule == TriggerRule.ONE_SUCCESS:
        if ok:
            return True
        if not done:
            return None
        if not failed:
            return Skip(f"{prefix}: every upstream task was skipped")
        return Skip(f"{prefix}: no upstream task succeeded", failure=True)
    if rule == TriggerRule.ONE_FAILED:
        if failed:
            return True
        return Skip(f"{prefix}: no upstream task failed") if done else None
    if rule == TriggerRule.NONE_FAILED:
        if failed:
            return Skip(f"{prefix}: upstream '{failed[0]}' {_what(failed[0], states[failed[0]], dl)}", failure=True)
        return True if done else None
    raise ValueError(f"unknown trigger rule {rule!r}")  # pragma: no cover


def evaluate(
    deps: Mapping[str, Sequence[str]], states: Mapping[str, TaskState], on_failure: str = "stop",
    rules: Rules = DEFAULT_RULES, facts: Facts = NO_FACTS,
) -> Decision:
    """Decide what to do next. ``deps``: task -> upstream names; ``states``: task -> state; ``rules``: the
    workflow's trigger rules; ``facts``: which skips were deliberate, what switches chose."""
    if stops_run(states, on_failure, rules):
        stop = culprit(states, rules)
        live = sorted(n for n, st in states.items() if st in (TaskState.PENDING, TaskState.SUBMITTED))
        return Decision(
            skip=live,
            cancel=sorted(n for n, st in states.items() if st == TaskState.RUNNING),
            outcome=RunState.FAILED,
            reason=f"task '{stop}' failed",
            why={n: Skip(f"run stopped: task '{stop}' failed", failure=True) for n in live},
        )

    submit: list[str] = []
    skip: list[str] = []
    why: dict[str, Skip] = {}
    # Skipping propagates down the DAG in one pass: walk in dependency order.
    effective = dict(states)
    deliberate = set(facts.deliberate)
    now = Facts(deliberate, facts.chosen)
    for name in topological_order(deps):
        if effective[name] != TaskState.PENDING:
            continue
        verdict = trigger(name, rules.rule(name), deps[name], effective, now)
        if isinstance(verdict, Skip):
            skip.append(name)
            why[name] = verdict
            effective[name] = TaskState.SKIPPED
            if not verdict.failure:
                deliberate.add(name)
        elif verdict:
            submit.append(name)
            effective[name] = TaskState.SUBMITTED

    outcome, reason = run_outcome(effective, deps, now) or (None, "")
    return Decision(submit=submit, skip=skip, outcome=outcome, reason=reason, why=why)


def step(
    deps: Mapping[str, Sequence[str]], children: Mapping[str, Sequence[str]], states: Mapping[str, TaskState],
    changed: Iterable[str], rules: Rules = DEFAULT_RULES, facts: Facts = NO_FACTS,
) -> Decision:
    """The incremental form of :func:`evaluate`, for the master's common path (cost independent of the DAG's
    size): only the children of tasks that ``changed`` (finished or were skipped since the last step) can
    become ready or be skipped. ``states`` (and ``facts``) must hold those children and their dependencies. It
    decides submit/skip only; a run whose failure stops it, and the run's outcome once nothing is live, are
    decided by :func:`evaluate` and :func:`run_outcome`. Skips propagate one level per step (the caller loops with
    the skipped tasks as the next ``changed``). Property-tested against :func:`evaluate`."""
    submit: list[str] = []
    skip: list[str] = []
    why: dict[str, Skip] = {}
    for name in sorted({c for n in changed for c in children[n]}):
        if states[name] != TaskState.PENDING:
            continue
        verdict = trigger(name, rules.rule(name), deps[name], states, facts)
        if isinstance(verdict, Skip):
            skip.append(name)
            why[name] = verdict
        elif verdict:
            submit.append(name)
    return Decision(submit=submit, skip=skip, why=why)


def stops_run(states: Mapping[str, TaskState], on_failure: str, rules: Rules = DEFAULT_RULES) -> bool:
    """Does a failure among ``states`` stop the run (``on_failure: stop``)? Not one that a trigger rule downstream
    of the failed task handles (``Rules.tolerant``): the run goes on, as with ``continue``, so that rule's task
    can run."""
    return on_failure == "stop" and any(st == TaskState.FAILED and n not in rules.tolerant
                                        for n, st in states.items())


def leaves(deps: Mapping[str, Sequence[str]]) -> set[str]:
    """The tasks nothing depends on."""
    return set(deps) - {u for ups in deps.values() for u in ups}


def run_outcome(
    states: Mapping[str, TaskState], deps: Mapping[str, Sequence[str]] | None = None, facts: Facts = NO_FACTS,
) -> tuple[RunState, str] | None:
    """The run's outcome once no task is live (None while one is): failed if a leaf task failed or was skipped
    because of a failure (every task counts as a leaf without ``deps``), succeeded otherwise (Airflow's rule, see
    the module's docstring)."""
    if any(st in TASK_LIVE for st in states.values()):
        return None
    if all(st == TaskState.SUCCEEDED for st in states.values()):
        return RunState.SUCCEEDED, "all tasks succeeded"
    ends = leaves(deps) if deps is not None else set(states)
    if any(_failed(n, states[n], facts.deliberate) for n in ends if n in states):
        return RunState.FAILED, f"task '{culprit(states)}' did not succeed"
    counts = {st: sum(1 for v in states.values() if v == st) for st in TaskState}
    said = ", ".join(f"{n} {st}" for st, n in counts.items() if n)
    return RunState.SUCCEEDED, f"no leaf task failed ({said})"


def culprit(states: Mapping[str, TaskState], rules: Rules = DEFAULT_RULES) -> str | None:
    """The task a failed run names as its cause: the first failed one (by name) whose failure no trigger rule
    handles, else the first failed one, else the first that did not succeed."""
    failed = sorted(n for n, st in states.items() if st == TaskState.FAILED)
    bad = ([n for n in failed if n not in rules.tolerant] or failed
           or sorted(n for n, st in states.items() if st != TaskState.SUCCEEDED))
    return bad[0] if bad else None


def topological_order(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Dependencies first; iterative, so deep DAGs do not hit the recursion limit."""
    done: set[str] = set()
    order: list[str] = []
    for root in deps:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if node in done:
                continue
            if expanded:
                done.add(node)
                order.append(node)
                continue
            stack.append((node, True))
            stack.extend((d, False) for d in deps[node] if d not in done)
    return order
