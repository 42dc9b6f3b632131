"""The ``python`` executor: import ``package.module:attr.path`` and call it with the rendered ``args``.

Interrupting a running function is the caller's job (it raises :class:`~app.errors.TaskStopped` into the
thread); such a TaskStopped propagates from here unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import traceback
from typing import IO, Any, cast

from app import templating
from app.errors import TaskFailure, TaskStopped
from app.executors.base import Body, ExecutionContext


class PythonExecutor:
    def run(self, spec: Body, ctx: ExecutionContext) -> Any:
        if spec.function is None:
            raise TaskFailure(f"task '{spec.name}' has no function")
        func = resolve_function(spec.function, ctx.allowed_python_modules)
        try:
            kwargs = templating.render(spec.args or {}, ctx.template_context())
        except templating.TemplateError as exc:
            raise TaskFailure(str(exc)) from None
        if _accepts_context(func):
            kwargs["context"] = ctx
        return call_captured(func, (), kwargs, ctx)


def call_captured(func: Any, args: Any, kwargs: dict[str, Any], ctx: ExecutionContext) -> Any:
    """Call ``func(*args, **kwargs)`` with its output in ``ctx.log``: its exception becomes a
    :class:`TaskFailure` (``Type: message``), a stop becomes :class:`TaskStopped`, a non-JSON result a failure."""
    if ctx.should_stop():
        raise TaskStopped("stopped before the function started")
    stream = cast(IO[str], ctx.log)
    try:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            result = func(*args, **kwargs)
    except TaskStopped:
        raise
    except Exception as exc:
        ctx.log.write(traceback.format_exc())
        if ctx.should_stop():
            raise TaskStopped(f"function stopped ({type(exc).__name__}: {exc})") from None
        raise TaskFailure(f"{type(exc).__name__}: {exc}") from None
    if ctx.should_stop():
        raise TaskStopped("function returned after it was told to stop")
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError):
        raise TaskFailure(f"result of type {type(result).__name__} is not JSON serialisable") from None
    return result


def resolve_function(path: str, allowed_modules: tuple[str, ...] = ()) -> Any:
    """Import ``package.module:attr.path``; :class:`TaskFailure` with a clear message when that fails."""
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise TaskFailure(f"function '{path}' is not of the form 'package.module:callable'")
    if allowed_modules and not any(
        module_name == m or module_name.startswith(m + ".") for m in allowed_modules
    ):
        raise TaskFailure(f"function '{path}' is outside TIDEFLOW_PYTHON_MODULES")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise TaskFailure(f"cannot import module '{module_name}': {type(exc).__name__}: {exc}") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TaskFailure(f"module '{module_name}' has no attribute '{attr_path}'") from None
    if not callable(obj):
        raise TaskFailure(f"'{path}' is not callable")
    return obj


def _accepts_context(func: Any) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("context")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
