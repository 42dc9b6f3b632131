"""The ``python`` executor: import ``package.module:attr.path`` and call it with the rendered ``args``.

Interrupting a running function is the caller's job (it raises :class:`~app.errors.TaskStopped` into the
thread); such a TaskStopped propagates from here unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
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
    if not module_allowed(module_name, allowed_modules):
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


def module_allowed(module_name: str, allowed_modules: tuple[str, ...]) -> bool:
    """``TIDEFLOW_PYTHON_MODULES``: the module prefixes a ``python`` task may name (empty: any)."""
    return not allowed_modules or any(module_name == m or module_name.startswith(m + ".") for m in allowed_modules)


def check_call(path: str, args: dict[str, Any], allowed_modules: tuple[str, ...] = ()) -> tuple[str | None, str | None]:
    """At registration: does ``path``'s function take ``args`` (by name, as the executor calls it, with
    ``context`` when it accepts one)? Returns ``(problem, warning)``: a problem (no such function, or its
    signature does not bind the args) is an error; a module this process cannot import, or one outside
    ``TIDEFLOW_PYTHON_MODULES`` (never imported), is only a warning: the workers may have it."""
    module_name, _, attr_path = path.partition(":")
    if not module_allowed(module_name, allowed_modules):
        return None, f"function '{path}' is outside TIDEFLOW_PYTHON_MODULES: not imported, its signature not checked"
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        return None, f"module '{module_name}' is not importable here: the signature of '{path}' is not checked"
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the module's own failure: the workers may import it; say so
        return None, (f"module '{module_name}' does not import here ({type(exc).__name__}: {exc}): the signature of "
                      f"'{path}' is not checked")
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            return f"function '{path}': module '{module_name}' has no attribute '{attr_path}'", None
        obj = getattr(obj, part)
    if not callable(obj):
        return f"function '{path}' is not callable", None
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None, None  # a builtin without a signature: nothing to check
    kwargs = dict.fromkeys(args)
    if _accepts_context(obj):
        kwargs["context"] = None
    try:
        sig.bind(**kwargs)
    except TypeError as exc:
        takes = ", ".join(str(p.replace(annotation=p.empty, default=p.empty)) for p in sig.parameters.values())
        return f"function '{path}' ({takes}) does not take its args: {exc}", None
    return None, None


def _accepts_context(func: Any) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("context")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
