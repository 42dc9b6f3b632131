import pytest

from app.errors import IllegalTransition
from app.states import (
    RUN_TRANSITIONS,
    TASK_TERMINAL,
    TASK_TRANSITIONS,
    RunState,
    TaskState,
    check_run_transition,
    check_task_transition,
)


def test_every_state_has_a_row():
    assert set(TASK_TRANSITIONS) == set(TaskState)
    assert set(RUN_TRANSITIONS) == set(RunState)


def test_succeeded_only_goes_back_to_pending_by_a_rerun():
    assert TASK_TRANSITIONS[TaskState.SUCCEEDED] == frozenset({TaskState.PENDING})  # task rerun
    with pytest.raises(IllegalTransition):
        check_task_transition(TaskState.SUCCEEDED, TaskState.FAILED)
    assert RUN_TRANSITIONS[RunState.SUCCEEDED] == frozenset({RunState.RUNNING})  # task rerun


@pytest.mark.parametrize("src", sorted(TASK_TERMINAL - {TaskState.SUCCEEDED, TaskState.FAILED}))
def test_unsuccessful_terminal_tasks_only_go_back_to_pending(src):
    assert TASK_TRANSITIONS[src] == frozenset({TaskState.PENDING})


def test_only_a_failed_task_can_be_forced_to_success():
    assert TASK_TRANSITIONS[TaskState.FAILED] == frozenset({TaskState.PENDING, TaskState.SUCCEEDED})
    for src in set(TaskState) - {TaskState.FAILED, TaskState.RUNNING}:  # running: a worker's own success
        assert TaskState.SUCCEEDED not in TASK_TRANSITIONS[src]


def test_pause_and_resume():
    check_run_transition(RunState.RUNNING, RunState.PAUSED)
    assert RUN_TRANSITIONS[RunState.PAUSED] == frozenset({RunState.RUNNING, RunState.CANCELLED})
    for src in set(RunState) - {RunState.RUNNING}:
        with pytest.raises(IllegalTransition):
            check_run_transition(src, RunState.PAUSED)


def test_a_task_cannot_skip_claiming():
    with pytest.raises(IllegalTransition):
        check_task_transition(TaskState.SUBMITTED, TaskState.SUCCEEDED)
    with pytest.raises(IllegalTransition):
        check_task_transition(TaskState.PENDING, TaskState.SUCCEEDED)
    check_task_transition(TaskState.SUBMITTED, TaskState.RUNNING)
    check_task_transition(TaskState.RUNNING, TaskState.SUBMITTED)  # retry with a new attempt
