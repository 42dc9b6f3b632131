"""Tiny functions used by the example workflows (``python`` tasks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def transform(context: Any = None, day: str = "", **kw: Any) -> dict[str, Any]:
    """Pretend to transform one day of data."""
    who = f" (run {context.run_id}, attempt {context.attempt})" if context is not None else ""
    print(f"transforming {day or 'today'}{who}")
    return {"rows": 42, "day": day}


def load(rows: int) -> dict[str, int]:
    """Pretend to load ``rows`` rows."""
    print(f"loading {rows} rows")
    return {"loaded": int(rows)}


def flaky(marker: str) -> str:
    """Fail the first time (leaving ``marker`` behind), succeed afterwards."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once\n")
        raise RuntimeError(f"first attempt fails (created {marker})")
    return "ok"
