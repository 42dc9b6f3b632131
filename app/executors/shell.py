"""The ``shell`` executor: ``/bin/sh -c COMMAND`` under a reaper, in a process group of its own.

Placeholders in the command are substituted shell-quoted (:func:`app.templating.render_shell`), so a
parameter is always one literal word. Output goes to a temporary file (no pipe to fill up) and is copied
into the bounded log as it grows (every :data:`COPY_SECONDS`: the lease heartbeat stores the log so far, the
live logs) and at the end.

The shell is started by a small reaper process (:mod:`app.executors.reaper`), a child subreaper that every
process of the command stays below, even one that leaves its process group or session, and that terminates
that whole tree (SIGTERM, then SIGKILL after :data:`TERM_GRACE_SECONDS`):
* when ``ctx.stop`` is set (the executor signals the reaper);
* when the process that runs this executor dies, by any means (SIGKILL of the pool process or of the worker's
  main process, which takes its pool processes with it, a process manager's stop, the OOM killer): the reaper
  gets its parent-death signal, so the command is dead within the grace, well within the attempt's lease,
  before the reconciler can declare the attempt lost and start another;
* when the shell exits: whatever the command left running in the background is terminated too, so nothing of
  an attempt outlives it (a retry never runs beside the previous attempt's leftovers); the attempt's log says
  how many processes that was.

What it costs: the reaper is ``python -I -S`` importing C modules only, about 10 ms of CPU per command on the
2-core test machine (``ShellExecutor.run`` of ``true``: p50 1.5 ms before the reaper, 12 ms with it).
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from app import templating
from app.errors import TaskFailure, TaskStopped
from app.executors.base import Body, ExecutionContext

POLL_SECONDS = 0.05
#: how long the command's processes get between SIGTERM and SIGKILL (stopped, supervisor dead, leftovers)
TERM_GRACE_SECONDS = 2.0
#: how much longer than the grace the executor waits for the reaper to finish a stop before killing it
REAPER_MARGIN_SECONDS = 3.0
REAPER = str(Path(__file__).with_name("reaper.py"))
_FINAL = ("exit", "stopped", "error")
_CHUNK = 64 * 1024
#: how often a running command's new output is copied into the log
COPY_SECONDS = 0.25
#: how much of the end of the output is searched for the result line
_RESULT_WINDOW = 64 * 1024


class ShellExecutor:
    def run(self, spec: Body, ctx: ExecutionContext) -> Any:
        if spec.command is None:
            raise TaskFailure(f"task '{spec.name}' has no command")
        tctx = ctx.template_context()
        try:
            command = templating.render_shell(spec.command, tctx)
            extra = {k: _env_text(templating.render(v, tctx)) for k, v in (spec.env or {}).items()}
        except templating.TemplateError as exc:
            raise TaskFailure(str(exc)) from None
        env = dict(os.environ)
        env.update(extra)
        env.update(
            TIDEFLOW_RUN_ID=str(ctx.run_id),
            TIDEFLOW_TASK=ctx.task_name,
            TIDEFLOW_ATTEMPT=str(ctx.attempt),
            TIDEFLOW_TASK_RUN_ID=str(ctx.task_run_id),
        )
        if ctx.should_stop():
            raise TaskStopped("stopped before the command started")

        with tempfile.TemporaryFile(prefix="tideflow-out-") as out:
            body = _Body.start(command, env, out)
            output = _Output(out, ctx)
            try:
                stopped = body.wait(ctx, output.tick)
            except BaseException:
                # e.g. the worker is shutting down: never leave the command behind
                body.stop()
                raise
            finally:
                output.copy(final=True)
            if stopped:
                raise TaskStopped("command stopped")
            code = body.returncode()
            if body.leftovers:
                ctx.log.write(f"[tideflow] the command left {body.leftovers} process(es) running: terminated\n")
            if code < 0:
                raise TaskFailure(f"command killed by signal {-code}")
            if code != 0:
                raise TaskFailure(f"command exited with status {code}")
            return _last_line(out)


class _Body:
    """One command run under its reaper, which is started in a new session (so a process manager that signals
    the worker's process group does not reach it) and reports on a pipe: ``pid N`` (the shell, leader of its
    own process group), then ``leftovers N`` and ``exit N`` (``Popen.returncode`` style), or ``stopped``, or
    ``error TEXT``."""

    def __init__(self, proc: subprocess.Popen[bytes], status_fd: int) -> None:
        self.proc = proc
        self._status_fd = status_fd
        os.set_blocking(status_fd, False)
        self._data = b""
        self._lines: list[str] = []
        self.shell_pid: int | None = None
        self.leftovers = 0

    @classmethod
    def start(cls, command: str, env: dict[str, str], out: IO[bytes]) -> _Body:
        job = _job(command, env)
        job_r, job_w = os.pipe()
        status_r, status_w = os.pipe()
        try:
            # Started from the thread that then waits for it: the reaper's parent-death signal fires when this
            # *thread* exits (prctl(2), PR_SET_PDEATHSIG), and it cannot exit before the reaper has.
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", REAPER, str(os.getpid()), f"{TERM_GRACE_SECONDS:g}", str(job_r),
                 str(status_w)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                pass_fds=(job_r, status_w),
            )
        except OSError as exc:
            os.close(job_w)
            os.close(status_r)
            raise TaskFailure(f"cannot start the command's reaper ({sys.executable}): {exc}") from None
        finally:
            os.close(job_r)
            os.close(status_w)
        body = cls(proc, status_r)
        try:
            with open(job_w, "wb") as pipe:  # closing it ends the job
                pipe.write(job)
        except BrokenPipeError:
            pass  # the reaper died before reading it: it has reported nothing, which returncode() says
        return body

    def wait(self, ctx: ExecutionContext, tick: Callable[[], None] | None = None) -> bool:
        """Wait for the reaper; True when the command was stopped because ``ctx.stop`` was set. The status pipe
        reaches EOF when the reaper exits (nothing else holds it), which wakes this up at once. ``tick`` is
        called at every poll."""
        while not self._pump(POLL_SECONDS):
            if tick is not None:
                tick()
            if ctx.should_stop():
                self.stop()
                return True
        self.proc.wait()
        return False

    def stop(self) -> None:
        """Have the reaper terminate the command's tree (SIGTERM, grace, SIGKILL) and wait for it; if it does not
        exit in time, SIGKILL it and the command's process group."""
        deadline = time.monotonic() + TERM_GRACE_SECONDS + REAPER_MARGIN_SECONDS
        while self.proc.poll() is None and time.monotonic() < deadline:
            # Repeated: a SIGTERM that lands before the reaper has installed its handler is lost if the pool
            # process ignores SIGTERM (tasks/celery_app.py; SIG_IGN is inherited). The handler acts on the first.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            if self._pump(0.1):
                break
        if self.proc.poll() is None and not self._pump(0):
            self.proc.kill()  # pragma: no cover - a stuck reaper
        self.proc.wait()
        self._pump(0)
        if self._final() is None:
            self._kill_shell_group()

    def _pump(self, timeout: float) -> bool:
        """Read what the reaper reported within ``timeout`` seconds; True once the pipe is at EOF."""
        if self._status_fd < 0:
            return True
        poller = select.poll()
        poller.register(self._status_fd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            return False
        try:
            while chunk := os.read(self._status_fd, 4096):
                self._data += chunk
        except BlockingIOError:
            return False  # read what there was; the reaper is still running
        os.close(self._status_fd)
        self._status_fd = -1
        self._lines = self._data.decode(errors="replace").splitlines()
        for line in self._lines:
            key, _, value = line.partition(" ")
            if key == "pid":
                self.shell_pid = int(value)
            elif key == "leftovers":
                self.leftovers = int(value)
        return True

    def _final(self) -> str | None:
        return next((line for line in reversed(self._lines) if line.partition(" ")[0] in _FINAL), None)

    def _kill_shell_group(self) -> None:
        """The reaper died without finishing its job: kill what can still be found of the command."""
        if self.shell_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.shell_pid, signal.SIGKILL)

    def returncode(self) -> int:
        """The shell's exit status; TaskFailure when the reaper could not run it or did not say."""
        final = self._final()
        if final is None:
            self._kill_shell_group()
            raise TaskFailure(f"the command's reaper died (status {self.proc.returncode}) before the command ended")
        key, _, value = final.partition(" ")
        if key == "exit":
            return int(value)
        if key == "error":
            raise TaskFailure(f"cannot run the command: {value}")
        raise TaskFailure("the command's reaper was terminated by a signal from outside Tideflow")

    def __del__(self) -> None:
        if self._status_fd >= 0:
            os.close(self._status_fd)


def _job(command: str, env: dict[str, str]) -> bytes:
    """The reaper's job: the command, then ``NAME=value`` entries, NUL-separated (none may contain a NUL)."""
    if "\0" in command:
        raise TaskFailure("the command contains a NUL character")
    parts = [os.fsencode(command)]
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise TaskFailure(f"invalid environment variable {key!r}")
        parts.append(os.fsencode(f"{key}={value}"))
    return b"\0".join(parts)


def _env_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


class _Output:
    """Streams the output file into the bounded log, chunk by chunk, from where the last copy stopped
    (``pread``: the file's position, which :func:`_last_line` uses, is left alone)."""

    def __init__(self, out: IO[bytes], ctx: ExecutionContext) -> None:
        self._fd = out.fileno()
        self._log = ctx.log
        self._offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._due = time.monotonic() + COPY_SECONDS

    def tick(self) -> None:
        """While the command runs: copy what it wrote, at most every :data:`COPY_SECONDS`."""
        now = time.monotonic()
        if now >= self._due:
            self._due = now + COPY_SECONDS
            self.copy()

    def copy(self, final: bool = False) -> None:
        """Copy the output written so far (up to the file's current size: a chatty command cannot keep this
        loop going); ``final``: the command has ended, flush a trailing partial character too."""
        end = os.fstat(self._fd).st_size
        while self._offset < end and (chunk := os.pread(self._fd, min(_CHUNK, end - self._offset), self._offset)):
            self._offset += len(chunk)
            self._log.write(self._decoder.decode(chunk))
        if final:
            rest = self._decoder.decode(b"", final=True)
            if rest:
                self._log.write(rest)


def _last_line(out: IO[bytes]) -> str | None:
    """The last non-empty line of the output, stripped (looked for in the last 64 KiB)."""
    size = out.seek(0, os.SEEK_END)
    out.seek(max(size - _RESULT_WINDOW, 0))
    text = out.read().decode("utf-8", "replace")
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return None
