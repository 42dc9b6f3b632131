"""The shell and python executors and the log buffer, with real processes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.definitions import TaskSpec
from app.errors import TaskFailure, TaskStopped
from app.executors import ExecutionContext, LogBuffer, executor_for
from app.executors.python import PythonExecutor
from app.executors.shell import REAPER, TERM_GRACE_SECONDS, ShellExecutor
from tests.support.shellbody import FORKING_BODY, body_is_up, kill_body, read_body_log, wait_body_dead
from tests.support.wait import wait_for_pid, wait_until

JOBS = "tests.support.jobs_unit"
REPO = Path(__file__).resolve().parents[2]


def make_ctx(
    *,
    params: dict[str, Any] | None = None,
    upstream: dict[str, Any] | None = None,
    log_max_bytes: int = 64 * 1024,
    allowed: tuple[str, ...] = (),
) -> ExecutionContext:
    return ExecutionContext(
        run_id=7,
        task_run_id=70,
        task_name="t",
        attempt=2,
        workflow="wf",
        priority=5,
        params=params or {},
        upstream=upstream or {},
        stop=threading.Event(),
        log=LogBuffer(log_max_bytes),
        allowed_python_modules=allowed,
    )


def shell(command: str, **kw: Any) -> TaskSpec:
    return TaskSpec.model_validate({"name": "t", "type": "shell", "command": command, **kw})


def py(function: str, args: dict[str, Any] | None = None) -> TaskSpec:
    return TaskSpec.model_validate({"name": "t", "type": "python", "function": function, "args": args})


def process_gone(pid: int) -> bool:
    """True when ``pid`` does not exist or is a zombie (our PID 1 may not reap orphans promptly)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


class ShellInThread:
    """A shell body run by the executor in a thread of its own; :meth:`ended` waits for it and returns what
    it raised (None if it returned)."""

    def __init__(self, command: str, ctx: ExecutionContext) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(command, ctx), daemon=True)
        self.thread.start()

    def _run(self, command: str, ctx: ExecutionContext) -> None:
        try:
            ShellExecutor().run(shell(command), ctx)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def ended(self, timeout: float = 10) -> BaseException | None:
        self.thread.join(timeout=timeout)
        assert not self.thread.is_alive(), "the body is still running"
        return self.error


# -- LogBuffer ---------------------------------------------------------------------------------


def test_logbuffer_keeps_everything_under_the_cap() -> None:
    buf = LogBuffer(100)
    assert buf.write("hello ") == 6
    buf.write("world")
    buf.flush()
    assert buf.getvalue() == "hello world"


def test_logbuffer_keeps_head_and_tail_and_counts_the_rest() -> None:
    buf = LogBuffer(20)
    buf.write("A" * 10)
    for _ in range(1000):
        buf.write("m")
    buf.write("Z" * 10)
    value = buf.getvalue()
    assert value == "A" * 10 + "\n... [1000 bytes truncated] ...\n" + "Z" * 10
    assert len(buf._head) + len(buf._tail) <= 3 * 20  # bounded, however much was written


def test_logbuffer_one_huge_write_and_multibyte_cuts() -> None:
    buf = LogBuffer(11)
    buf.write("é" * 1000)  # 2000 bytes; the cuts fall inside characters
    # head: 5 bytes -> two whole characters; tail: 6 bytes -> three
    assert buf.getvalue() == "éé\n... [1990 bytes truncated] ...\nééé"


def test_logbuffer_is_thread_safe() -> None:
    buf = LogBuffer(10**6)

    def writer(ch: str) -> None:
        for _ in range(2000):
            buf.write(ch * 10)

    threads = [threading.Thread(target=writer, args=(c,)) for c in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    value = buf.getvalue()
    assert len(value) == 4 * 2000 * 10
    assert all(value.count(c) == 20000 for c in "abcd")


# -- executor_for / context ----------------------------------------------------------------------


def test_executor_for_known_and_unknown_types() -> None:
    assert isinstance(executor_for("shell"), ShellExecutor)
    assert isinstance(executor_for("python"), PythonExecutor)
    with pytest.raises(TaskFailure, match="no executor for task type 'subworkflow'"):
        executor_for("subworkflow")


def test_template_context() -> None:
    ctx = make_ctx(params={"a": 1}, upstream={"u": {"k": "v"}})
    assert ctx.template_context() == {
        "params": {"a": 1},
        "upstream": {"u": {"k": "v"}},
        "run": {"id": 7, "priority": 5, "workflow": "wf"},
        "schedule": {},  # filled from the run (app.templating.schedule_scope)
    }
    assert not ctx.should_stop()
    ctx.stop.set()
    assert ctx.should_stop()


# -- shell ---------------------------------------------------------------------------------------


def test_shell_success_returns_last_non_empty_line() -> None:
    ctx = make_ctx()
    result = ShellExecutor().run(shell("echo first; echo '  last line  ' >&2; echo; echo '   '"), ctx)
    assert result == "last line"
    assert ctx.log.getvalue() == "first\n  last line  \n\n   \n"


def test_shell_no_output_gives_none() -> None:
    assert ShellExecutor().run(shell("true"), make_ctx()) is None


@pytest.mark.parametrize(
    "value",
    [
        '"; touch {marker}; echo "',
        "'; touch {marker}; echo '",
        "$(touch {marker})",
        "`touch {marker}`",
        "x && touch {marker}",
        "a\nb; touch {marker}",
    ],
)
def test_shell_params_are_quoted(tmp_path: Path, value: str) -> None:
    marker = tmp_path / "pwned"
    value = value.format(marker=marker)
    ctx = make_ctx(params={"v": value})
    ShellExecutor().run(shell("printf '%s' {{ params.v }}"), ctx)
    assert not marker.exists()
    assert ctx.log.getvalue() == value


def test_shell_placeholder_inside_word_and_json_values(tmp_path: Path) -> None:
    ctx = make_ctx(params={"n": 3, "cfg": {"k": [1, "two"]}}, upstream={"extract": {"path": "a b"}})
    result = ShellExecutor().run(
        shell("echo n={{ params.n }} {{ upstream.extract.path }} {{ params.cfg }} run={{ run.id }}"), ctx
    )
    assert result == 'n=3 a b {"k": [1, "two"]} run=7'


def test_shell_env_rendering(tmp_path: Path) -> None:
    ctx = make_ctx(params={"name": "$(whoami) it's", "n": 3})
    spec = shell(
        'echo "$GREETING|$COUNT|$TIDEFLOW_RUN_ID|$TIDEFLOW_TASK|$TIDEFLOW_ATTEMPT|$TIDEFLOW_TASK_RUN_ID"',
        env={"GREETING": "hello {{ params.name }}", "COUNT": "{{ params.n }}"},
    )
    assert ShellExecutor().run(spec, ctx) == "hello $(whoami) it's|3|7|t|2|70"


def test_shell_missing_template_value_fails() -> None:
    with pytest.raises(TaskFailure, match="upstream.extract.rows"):
        ShellExecutor().run(shell("echo {{ upstream.extract.rows }}"), make_ctx(upstream={"extract": {}}))


def test_shell_non_zero_exit_fails_and_keeps_output() -> None:
    ctx = make_ctx()
    with pytest.raises(TaskFailure, match=r"^command exited with status 3$"):
        ShellExecutor().run(shell("echo oops >&2; exit 3"), ctx)
    assert ctx.log.getvalue() == "oops\n"


def test_shell_killed_by_signal() -> None:
    with pytest.raises(TaskFailure, match=r"^command killed by signal 9$"):
        ShellExecutor().run(shell("kill -9 $$"), make_ctx())


def test_shell_log_is_capped() -> None:
    ctx = make_ctx(log_max_bytes=10 * 1024)
    result = ShellExecutor().run(
        shell("echo start; head -c 1048576 /dev/zero | tr '\\0' x; echo; echo done"), ctx
    )
    assert result == "done"
    log = ctx.log.getvalue()
    assert log.startswith("start\nxxx")
    assert log.endswith("xxx\ndone\n")
    assert "bytes truncated] ..." in log
    assert len(log.encode()) < 10 * 1024 + 100
    assert ctx.log.bytes_written == len("start\n") + 1048576 + len("\ndone\n")


def test_shell_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    ctx = make_ctx()
    body = ShellInThread(f"sleep 60 & echo $! > {pidfile}; echo started; sleep 60", ctx)
    bg_pid = wait_for_pid(pidfile, timeout=10, interval=0.02)
    assert not process_gone(bg_pid)

    stopped_at = time.monotonic()
    ctx.stop.set()
    assert isinstance(body.ended(), TaskStopped)
    assert time.monotonic() - stopped_at < 5
    wait_until(lambda: process_gone(bg_pid), timeout=5, interval=0.02,
               message="timed out waiting for the background sleep to die")
    assert "started" in ctx.log.getvalue()


def test_shell_stop_kills_children_that_ignore_sigterm(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    ctx = make_ctx()
    body = ShellInThread(f"sh -c 'trap \"\" TERM; echo $$ > {pidfile}; sleep 60; sleep 60' & wait", ctx)
    bg_pid = wait_for_pid(pidfile, timeout=10, interval=0.02)
    ctx.stop.set()
    assert isinstance(body.ended(), TaskStopped)
    wait_until(lambda: process_gone(bg_pid), timeout=5, interval=0.02,
               message="timed out waiting for the TERM-ignoring child to die")


def test_shell_stop_set_before_start_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    ctx = make_ctx()
    ctx.stop.set()
    with pytest.raises(TaskStopped):
        ShellExecutor().run(shell(f"touch {marker}"), ctx)
    assert not marker.exists()


def test_shell_stdin_is_devnull() -> None:
    assert ShellExecutor().run(shell("cat; echo eof"), make_ctx()) == "eof"


# -- shell: the reaper ----------------------------------------------------------------------------

#: runs one shell body (attempt 1) through the executor, in the main thread or in a thread of its own
_EXECUTOR_CHILD = """
import sys, threading
from tests.unit.test_executors import make_ctx, shell
from app.executors.shell import REAPER, TERM_GRACE_SECONDS, ShellExecutor
from tests.support.shellbody import FORKING_BODY, body_is_up, kill_body, read_body_log, wait_body_dead
from tests.support.wait import wait_until
spec = shell(sys.argv[1], env={"BODY_LOG": sys.argv[2]})
ctx = make_ctx()
ctx.attempt = 1
if sys.argv[3] == "thread":
    t = threading.Thread(target=ShellExecutor().run, args=(spec, ctx))
    t.start()
    t.join()
else:
    ShellExecutor().run(spec, ctx)
"""


def _reapers_of(parent: int) -> list[int]:
    """Live reaper processes started by ``parent`` (argv: python -I -S REAPER PARENT ...)."""
    found = []
    for name in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(REAPER) in argv and argv[argv.index(os.fsencode(REAPER)) + 1:][:1] == [str(parent).encode()] \
                and not process_gone(int(name)):
            found.append(int(name))
    return found


@pytest.mark.parametrize("where", ["main thread", "thread"])
def test_shell_body_dies_with_the_process_running_the_executor(tmp_path: Path, where: str) -> None:
    """SIGKILL of the process that runs the executor (a pool process, say): every process of the command dies
    within the reaper's grace, including children that left its process group and session (double fork +
    setsid), instead of running on as orphans."""
    log = tmp_path / "body.log"
    child = subprocess.Popen(
        [sys.executable, "-c", _EXECUTOR_CHILD, FORKING_BODY, str(log), "thread" if where == "thread" else "main"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        procs = wait_until(lambda: body_is_up(log), timeout=30, message="the body's processes never all started")
        assert len({p.sid for p in procs}) >= 2, procs  # one of them escaped the session
        assert _reapers_of(child.pid), "the command should run under a reaper"
        child.kill()
        child.wait()
        killed = time.time()
        assert wait_body_dead(log, timeout=TERM_GRACE_SECONDS + 3) - killed < TERM_GRACE_SECONDS + 1
        wait_until(lambda: not _reapers_of(child.pid), timeout=5, message="the reaper should exit")
        ticks = [line for line in read_body_log(log) if line.event == "tick"]
        assert len({line.pid for line in ticks}) == 2, ticks  # both tick loops ran, until they were killed
    finally:
        child.kill()
        kill_body(log)


def test_reaper_whose_parent_died_before_it_armed_the_death_signal_runs_nothing(tmp_path: Path) -> None:
    """The race PR_SET_PDEATHSIG leaves open: the parent dies before the reaper asks for the signal. The reaper
    checks getppid() afterwards; here it is told its parent is a pid that is not its parent."""
    marker = tmp_path / "ran"
    job_r, job_w = os.pipe()
    status_r, status_w = os.pipe()
    not_my_parent = os.getpid() + 1 if os.getpid() != 1 else 2
    reaper = subprocess.Popen([sys.executable, "-I", "-S", REAPER, str(not_my_parent), "2", str(job_r), str(status_w)],
                              pass_fds=(job_r, status_w), start_new_session=True)
    os.close(job_r)
    os.close(status_w)
    with contextlib.suppress(BrokenPipeError), open(job_w, "wb") as pipe:
        pipe.write(f"touch {marker}\0PATH=/usr/bin:/bin".encode())
    assert reaper.wait(timeout=10) == 0
    with open(status_r, "rb") as status:
        assert status.read() == b"stopped\n"
    assert not marker.exists()


def test_shell_reaper_reports_exit_status_and_pid(tmp_path: Path) -> None:
    job_r, job_w = os.pipe()
    status_r, status_w = os.pipe()
    reaper = subprocess.Popen([sys.executable, "-I", "-S", REAPER, str(os.getpid()), "2", str(job_r), str(status_w)],
                              pass_fds=(job_r, status_w), start_new_session=True, stdout=subprocess.DEVNULL)
    os.close(job_r)
    os.close(status_w)
    with open(job_w, "wb") as pipe:
        pipe.write(b'echo "$X" > ' + os.fsencode(tmp_path / "x") + b"; exit 7\0X=a=b c\0PATH=/usr/bin:/bin")
    assert reaper.wait(timeout=10) == 0
    with open(status_r, "rb") as status:
        lines = status.read().decode().splitlines()
    assert lines[0].startswith("pid ") and lines[1:] == ["leftovers 0", "exit 7"]
    assert (tmp_path / "x").read_text() == "a=b c\n"


def test_shell_leftovers_are_terminated_when_the_command_ends(tmp_path: Path) -> None:
    """Background processes still running when the shell exits are terminated (SIGTERM; SIGKILL for one that
    ignores it), so nothing of an attempt outlives it; the result and status are the shell's."""
    pidfile = tmp_path / "bg.pid"
    ctx = make_ctx()
    started = time.monotonic()
    result = ShellExecutor().run(shell(
        f"sleep 60 & echo $! > {pidfile}; (setsid sh -c 'trap \"\" TERM; echo $$ >> {pidfile}; exec sleep 60' &);"
        f" while [ $(wc -l < {pidfile}) -lt 2 ]; do sleep 0.01; done; echo done"), ctx)
    assert result == "done"
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2 and all(process_gone(pid) for pid in pids)
    assert time.monotonic() - started < TERM_GRACE_SECONDS + 3
    assert ctx.log.getvalue().endswith("[tideflow] the command left 2 process(es) running: terminated\n")


def test_shell_without_leftovers_adds_nothing_to_the_log() -> None:
    ctx = make_ctx()
    assert ShellExecutor().run(shell("echo a; (sleep 0.1; echo b) & wait"), ctx) == "b"
    assert ctx.log.getvalue() == "a\nb\n"


def test_shell_stop_kills_children_that_left_the_session(tmp_path: Path) -> None:
    pidfile = tmp_path / "escaped.pid"
    ctx = make_ctx()
    body = ShellInThread(f"(setsid sh -c 'echo $$ > {pidfile}; exec sleep 60' &); sleep 60", ctx)
    escaped = wait_for_pid(pidfile, timeout=10, interval=0.02)
    assert os.getsid(escaped) != os.getsid(os.getpid())
    ctx.stop.set()
    assert isinstance(body.ended(), TaskStopped)
    assert process_gone(escaped)


@pytest.mark.parametrize(("sig", "message"), [
    (signal.SIGKILL, r"^the command's reaper died \(status -9\) before the command ended$"),
    (signal.SIGTERM, r"^the command's reaper was terminated by a signal from outside Tideflow$"),
])
def test_shell_reaper_killed_from_outside(tmp_path: Path, sig: int, message: str) -> None:
    """Not something Tideflow does; if someone does, the attempt fails and the command does not run on."""
    pidfile = tmp_path / "sh.pid"
    body = ShellInThread(f"echo $$ > {pidfile}; sleep 60", make_ctx())
    shell_pid = wait_for_pid(pidfile, timeout=10, interval=0.02)
    (reaper,) = _reapers_of(os.getpid())
    os.kill(reaper, sig)
    error = body.ended()
    assert isinstance(error, TaskFailure), error
    assert re.match(message, str(error)), error
    wait_until(lambda: process_gone(shell_pid), timeout=5, interval=0.02,
               message="timed out waiting for the shell to die")


def test_shell_cannot_start_reaper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(TaskFailure, match=r"^cannot start the command's reaper \(/nonexistent/python\)"):
        ShellExecutor().run(shell("true"), make_ctx())


@pytest.mark.parametrize("env", [{"A": "x\0y"}, {"A=B": "x"}])
def test_shell_invalid_environment_fails(env: dict[str, str]) -> None:
    with pytest.raises(TaskFailure, match="invalid environment variable"):
        ShellExecutor().run(shell("true", env=env), make_ctx())


# -- python --------------------------------------------------------------------------------------


def test_python_args_templated_from_params_and_upstream() -> None:
    ctx = make_ctx(params={"n": 2}, upstream={"extract": {"rows": 40}})
    result = PythonExecutor().run(
        py(f"{JOBS}:add", {"a": "{{ params.n }}", "b": "{{ upstream.extract.rows }}"}), ctx
    )
    assert result == {"sum": 42, "types": ["int", "int"]}


def test_python_args_keep_json_types_and_interpolate_strings() -> None:
    ctx = make_ctx(params={"n": 2, "cfg": {"a": [1, 2]}}, upstream={"u": "text"})
    result = PythonExecutor().run(
        py(
            f"{JOBS}:echo",
            {
                "whole": "{{ params.cfg }}",
                "inside": "n={{ params.n }} u={{ upstream.u }}",
                "nested": {"list": ["{{ params.n }}", 3]},
                "run": "{{ run.workflow }}",
                "literal": True,
            },
        ),
        ctx,
    )
    assert result == {
        "whole": {"a": [1, 2]},
        "inside": "n=2 u=text",
        "nested": {"list": [2, 3]},
        "run": "wf",
        "literal": True,
    }


def test_python_output_is_captured() -> None:
    ctx = make_ctx()
    assert PythonExecutor().run(py(f"{JOBS}:shout", {"text": "hi"}), ctx) == "HI"
    assert ctx.log.getvalue() == "out: hi\nerr: hi\n"


def test_python_exception_fails_with_traceback_in_log() -> None:
    ctx = make_ctx()
    with pytest.raises(TaskFailure, match=r"^ValueError: kaboom$"):
        PythonExecutor().run(py(f"{JOBS}:boom"), ctx)
    log = ctx.log.getvalue()
    assert "about to fail" in log
    assert "Traceback (most recent call last)" in log
    assert "raise ValueError(message)" in log


def test_python_bad_arguments_fail() -> None:
    with pytest.raises(TaskFailure, match="TypeError"):
        PythonExecutor().run(py(f"{JOBS}:add", {"a": 1}), make_ctx())


@pytest.mark.parametrize("func", ["not_json", "nan"])
def test_python_non_json_result_fails(func: str) -> None:
    with pytest.raises(TaskFailure, match=r"^result of type \w+ is not JSON serialisable$"):
        PythonExecutor().run(py(f"{JOBS}:{func}"), make_ctx())


@pytest.mark.parametrize(
    ("allowed", "ok"),
    [
        ((), True),
        (("tests",), True),
        (("tests.support",), True),
        (("examples", "tests.support.jobs_unit"), True),
        (("tests.sup",), False),
        (("os",), False),
        (("tests.support.jobs_unit.x",), False),
    ],
)
def test_python_module_allowlist(allowed: tuple[str, ...], ok: bool) -> None:
    spec = py(f"{JOBS}:add", {"a": 1, "b": 2})
    ctx = make_ctx(allowed=allowed)
    if ok:
        assert PythonExecutor().run(spec, ctx)["sum"] == 3
    else:
        with pytest.raises(TaskFailure, match=r"is outside TIDEFLOW_PYTHON_MODULES"):
            PythonExecutor().run(spec, ctx)


def test_python_allowlist_checked_before_import(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "examples.etl", raising=False)
    with pytest.raises(TaskFailure, match="outside"):
        PythonExecutor().run(py("examples.etl:load", {"rows": 1}), make_ctx(allowed=("tests",)))
    assert "examples.etl" not in sys.modules


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("no_such_module_xyz:f", r"^cannot import module 'no_such_module_xyz': ModuleNotFoundError"),
        (f"{JOBS}:missing", rf"^module '{JOBS}' has no attribute 'missing'$"),
        (f"{JOBS}:Namespace.missing", rf"^module '{JOBS}' has no attribute 'Namespace.missing'$"),
        (f"{JOBS}:NOT_CALLABLE", rf"^'{JOBS}:NOT_CALLABLE' is not callable$"),
    ],
)
def test_python_import_errors_are_clear(function: str, message: str) -> None:
    with pytest.raises(TaskFailure, match=message):
        PythonExecutor().run(py(function), make_ctx())


def test_python_nested_attribute() -> None:
    assert PythonExecutor().run(py(f"{JOBS}:Namespace.nested", {"v": 21}), make_ctx()) == 42


def test_python_context_injection() -> None:
    ctx = make_ctx()
    assert PythonExecutor().run(py(f"{JOBS}:with_context", {"x": 1}), ctx) == {
        "x": 1,
        "task": "t",
        "attempt": 2,
        "run": 7,
    }
    # no `context` parameter, no injection (echo takes **kwargs and returns them)
    assert PythonExecutor().run(py(f"{JOBS}:echo", {"x": 1}), ctx) == {"x": 1}


def test_python_stop_set_while_running_becomes_task_stopped() -> None:
    with pytest.raises(TaskStopped):
        PythonExecutor().run(py(f"{JOBS}:catches_everything"), make_ctx())


def test_python_task_stopped_propagates_unchanged() -> None:
    with pytest.raises(TaskStopped, match=r"^lease lost$"):
        PythonExecutor().run(py(f"{JOBS}:raises_stopped"), make_ctx())


def test_python_exception_after_stop_is_task_stopped() -> None:
    ctx = make_ctx()
    ctx.stop.set()
    # stop already set: the function does not even start
    with pytest.raises(TaskStopped):
        PythonExecutor().run(py(f"{JOBS}:boom"), ctx)
    assert "about to fail" not in ctx.log.getvalue()


# -- examples ------------------------------------------------------------------------------------


def test_example_functions(tmp_path: Path) -> None:
    ctx = make_ctx(params={"day": "2024-01-01"})
    out = PythonExecutor().run(py("examples.etl:transform", {"day": "{{ params.day }}"}), ctx)
    assert out == {"rows": 42, "day": "2024-01-01"}
    assert "run 7, attempt 2" in ctx.log.getvalue()
    assert PythonExecutor().run(py("examples.etl:load", {"rows": 42}), make_ctx()) == {"loaded": 42}
    marker = tmp_path / "flaky"
    spec = py("examples.etl:flaky", {"marker": str(marker)})
    with pytest.raises(TaskFailure, match="RuntimeError"):
        PythonExecutor().run(spec, make_ctx())
    assert PythonExecutor().run(spec, make_ctx()) == "ok"
    assert os.path.exists(marker)
