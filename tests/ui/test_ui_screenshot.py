"""What a person sees: a screenshot of a run page with a succeeded, a failed and a running task at once (and
the skipped and pending tasks after them), whose pixels must show each node in its state's colour (saved as
tests/ui/artifacts/run-page.png)."""

from __future__ import annotations

from typing import Any

from tests.support.wait import wait_until
from tests.ui.harness import ARTIFACTS, STATE_RGB, Page, System, rgb
from tests.ui.pixels import decode

THREE_STATES = """
name: three-states
on_failure: continue
tasks:
  - {name: ok, type: shell, command: "echo all good"}
  - {name: bad, type: shell, command: "echo about to fail; exit 1", retries: 0, depends_on: [ok]}
  - {name: slow, type: shell, command: "sleep 600", timeout: 900, depends_on: [ok]}
  - {name: after_bad, type: shell, command: "echo never", depends_on: [bad]}
  - {name: after_slow, type: shell, command: "echo later", depends_on: [slow]}
"""
EXPECTED = {"ok": "succeeded", "bad": "failed", "slow": "running", "after_bad": "skipped",
            "after_slow": "pending"}


def close(a: tuple[int, int, int], b: tuple[int, int, int], tolerance: int = 6) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def full_page_screenshot(page: Page) -> tuple[bytes, dict[str, dict[str, Any]], float]:
    """A screenshot of the whole page (the window is made as tall as the document) and the nodes' boxes,
    taken while the layout is still: boxes read before and after the shot must agree."""
    height = page.js("return document.documentElement.scrollHeight + (window.outerHeight - window.innerHeight)")
    page.driver.set_window_size(1400, min(int(height) + 20, 6000))
    page.js("window.scrollTo(0, 0)")

    def shot() -> tuple[bytes, dict[str, dict[str, Any]], float] | None:
        before = page.nodes()
        png = page.driver.get_screenshot_as_png()
        after = page.nodes()
        if {n: v["rect"] for n, v in before.items()} != {n: v["rect"] for n, v in after.items()}:
            return None
        return png, after, float(page.js("return window.devicePixelRatio"))

    return wait_until(shot, timeout=30, message="the page kept moving while taking the screenshot")


def test_run_page_screenshot_shows_nodes_coloured_by_state(page: Page, system: System) -> None:
    system.register("three-states", THREE_STATES)
    run_id = system.start("three-states")
    try:
        page.login(f"/runs/{run_id}")
        page.wait(lambda: page.node_states() == EXPECTED, timeout=90,
                  message="the page never showed ok succeeded, bad failed and slow running together")
        # the rest of the page has caught up too: timeline bars and the history of the failure
        page.wait(lambda: len(page.bars("ok")) == len(page.bars("bad")) == len(page.bars("slow")) == 1,
                  message="the timeline does not show one bar per task")
        page.wait(lambda: "attempt 1 failed" in page.text("#history-body"), message="history not shown")

        png, nodes, ratio = full_page_screenshot(page)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "run-page.png").write_bytes(png)
        image = decode(png)

        seen = {}
        for name, state in EXPECTED.items():
            node = nodes[name]
            assert f"state-{state}" in node["cls"].split(), node
            assert rgb(node["fill"]) == STATE_RGB[state], f"{name}: computed fill {node['fill']} is not {state}'s"
            box = node["rect"]
            y = int((box["y"] + box["height"] / 2) * ratio)
            x0, x1 = int((box["x"] + 3) * ratio), int((box["x"] + box["width"] - 3) * ratio)
            assert 0 <= y < image.height and x1 <= image.width, f"{name} is outside the screenshot: {box}"
            seen[name] = image.dominant(x0, x1, y)
            assert close(seen[name], STATE_RGB[state]), (
                f"node {name} ({state}) shows {seen[name]} in the screenshot at y={y}, x={x0}..{x1}; "
                f"expected about {STATE_RGB[state]} (screenshot: {ARTIFACTS / 'run-page.png'})")
        assert len(set(seen.values())) == len(EXPECTED), f"each state must look different: {seen}"
    finally:
        system.post(f"/api/runs/{run_id}/cancel")  # stop the sleep now
