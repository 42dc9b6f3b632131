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


def test_succeeded_is_final():
    assert TASK_TRANSITIONS[TaskState.SUCCEEDED] == frozenset()
    with pytest.raises(IllegalTransition):
        check_task_transition(TaskState.SUCCEEDED, TaskState.PENDING)
    with pytest.raises(IllegalTransition):
        check_run_transition(RunState.SUCCEEDED, RunState.RUNNING)


@pytest.mark.parametrize("src", sorted(TASK_TERMINAL - {TaskState.SUCCEEDED}))
def test_unsuccessful_terminal_tasks_only_go_back_to_pending(src):
    assert TASK_TRANSITIONS[src] == frozenset({TaskState.PENDING})


def test_a_task_cannot_skip_claiming():
    with pytest.raises(IllegalTransition):
        check_task_transition(TaskState.SUBMITTED, TaskState.SUCCEEDED)
    with pytest.raises(IllegalTransition):
        check_task_transition(TaskState.PENDING, TaskState.SUCCEEDED)
    check_task_transition(TaskState.SUBMITTED, TaskState.RUNNING)
    check_task_transition(TaskState.RUNNING, TaskState.SUBMITTED)  # retry with a new attempt
