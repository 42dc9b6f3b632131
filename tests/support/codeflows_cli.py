"""A code workflow whose parameters carry every kind of type hint ``tideflow run start -p`` converts by
(``TIDEFLOW_WORKFLOW_MODULES=tests.support.codeflows,tests.support.codeflows_cli``): it returns what it received,
with each value's type name, so a test sees what the function got."""

from __future__ import annotations

from typing import Any, Literal, Optional

import tideflow


@tideflow.workflow(name="typed")
def typed(
    ctx: tideflow.Context, n: int, ratio: float, flag: bool, label: str, opts: dict[str, Any], items: list[int],
    maybe: int | None = None, old_style: Optional[float] = None, mode: Literal["fast", "slow"] = "fast",  # noqa: UP045 - both spellings are tested
    loose: Any = None, bare=None,  # noqa: ANN001 - a parameter without a hint is tested
) -> dict[str, Any]:
    got = {"n": n, "ratio": ratio, "flag": flag, "label": label, "opts": opts, "items": items, "maybe": maybe,
           "old_style": old_style, "mode": mode, "loose": loose, "bare": bare}
    return {k: [type(v).__name__, v] for k, v in got.items()}
