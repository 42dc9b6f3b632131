"""The ``shell`` executor: ``/bin/sh -c COMMAND`` in its own process group.

Placeholders in the command are substituted shell-quoted (:func:`app.templating.render_shell`), so a
parameter is always one literal word. Output goes to a temporary file (no pipe to fill up) and is copied
into the bounded log at the end. When ``ctx.stop`` is set the whole process group gets SIGTERM, then
SIGKILL after a grace period, so background children do not outlive the attempt.
"""

from __future__ import annotations

import codecs
import json
import os
import signal
import subprocess
import tempfile
import time
from typing import IO, Any

from app import templating
from app.errors import TaskFailure, TaskStopped
from app.executors.base import Body, ExecutionContext

POLL_SECONDS = 0.05
TERM_GRACE_SECONDS = 2.0
_CHUNK = 64 * 1024
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
            try:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", command],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise TaskFailure(f"cannot start /bin/sh: {exc}") from None
            try:
                stopped = self._wait(proc, ctx)
            except BaseException:
                # e.g. the worker is shutting down: never leave the group behind
                _kill_group(proc)
                raise
            finally:
                _copy_output(out, ctx)
            if stopped:
                raise TaskStopped("command stopped")
            code = proc.returncode
            if code < 0:
                raise TaskFailure(f"command killed by signal {-code}")
            if code != 0:
                raise TaskFailure(f"command exited with status {code}")
            return _last_line(out)

    @staticmethod
    def _wait(proc: subprocess.Popen[bytes], ctx: ExecutionContext) -> bool:
        """Wait for the shell; True when it was stopped because ``ctx.stop`` was set."""
        while True:
            try:
                proc.wait(timeout=POLL_SECONDS)
                return False
            except subprocess.TimeoutExpired:
                if ctx.should_stop():
                    _kill_group(proc)
                    return True


def _env_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        # only possible if the pgid was reused by someone else's group: nothing of ours is left
        return False


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the shell's process group, give it a grace period, then SIGKILL whatever is left."""
    pgid = proc.pid  # start_new_session: the shell leads its own group
    if _signal_group(pgid, signal.SIGTERM):
        deadline = time.monotonic() + TERM_GRACE_SECONDS
        while time.monotonic() < deadline:
            try:
                proc.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                continue
        # background children may have ignored SIGTERM (or the shell exited first): no survivors
        _signal_group(pgid, signal.SIGKILL)
    try:
        proc.wait(timeout=TERM_GRACE_SECONDS)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        proc.kill()
        proc.wait()


def _copy_output(out: IO[bytes], ctx: ExecutionContext) -> None:
    """Stream the output file into the bounded log, chunk by chunk."""
    out.flush()
    out.seek(0)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := out.read(_CHUNK):
        ctx.log.write(decoder.decode(chunk))
    rest = decoder.decode(b"", final=True)
    if rest:
        ctx.log.write(rest)


def _last_line(out: IO[bytes]) -> str | None:
    """The last non-empty line of the output, stripped (looked for in the last 64 KiB)."""
    size = out.seek(0, os.SEEK_END)
    out.seek(max(size - _RESULT_WINDOW, 0))
    text = out.read().decode("utf-8", "replace")
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return None
