"""The objects behind the UI tests' fixtures (tests/ui/conftest.py): the running system, the browser, a page."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from selenium import webdriver
from selenium.common.exceptions import JavascriptException, NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.support.cluster import Cluster
from tests.support.wait import wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TOKEN = "test-token"
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000", "--force-device-scale-factor=1",
)
#: what a page may be in the middle of: elements replaced by a refresh, or not rendered yet
FLAKY_DOM = (StaleElementReferenceException, NoSuchElementException, JavascriptException)

#: the fixed colours of the task states and attempt outcomes (app/ui/static/style.css)
STATE_RGB = {
    "pending": (156, 163, 175), "submitted": (245, 158, 11), "running": (37, 99, 235),
    "succeeded": (22, 163, 74), "failed": (220, 38, 38), "skipped": (196, 181, 253), "cancelled": (109, 40, 217),
    "timed_out": (234, 88, 12), "lost": (71, 85, 105),
}

T = TypeVar("T")


def rgb(css: str) -> tuple[int, int, int]:
    """A computed CSS colour, 'rgb(1, 2, 3)' or 'rgba(1, 2, 3, 1)', as (1, 2, 3)."""
    parts = css[css.index("(") + 1 : css.index(")")].split(",")
    r, g, b = (int(float(p)) for p in parts[:3])
    return (r, g, b)


def missing_browser() -> list[str]:
    return [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]


# -- the system -------------------------------------------------------------------------------------


class System:
    """A worker and ``tideflow web`` on the test's database and broker; the REST API with the bearer token."""

    def __init__(self, cluster: Cluster, base_url: str, workdir: Path) -> None:
        self.cluster = cluster
        self.base_url = base_url
        self.workdir = workdir
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

    def register(self, name: str, yaml_text: str) -> None:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml_text)
        self.cluster.run_cli("workflow", "register", str(path), check=True)

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return self.http.post(path, json=body)

    def start(self, workflow: str, params: dict[str, Any] | None = None) -> int:
        resp = self.post("/api/runs", {"workflow": workflow, "params": params or {}})
        assert resp.status_code == 201, resp.text
        return int(resp.json()["id"])

    def run(self, run_id: int) -> dict[str, Any]:
        resp = self.http.get(f"/api/runs/{run_id}")
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    def task(self, run_id: int, name: str) -> dict[str, Any]:
        return next(t for t in self.run(run_id)["tasks"] if t["name"] == name)

    def wait_run(self, run_id: int, *states: str, timeout: float = 60) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            run = self.run(run_id)
            return run if run["state"] in states else None

        return wait_until(reached, timeout=timeout, interval=0.2, message=f"run {run_id} did not reach {states}")

    def wait_task(self, run_id: int, name: str, *states: str, timeout: float = 60) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            task = self.task(run_id, name)
            return task if task["state"] in states else None

        return wait_until(reached, timeout=timeout, interval=0.2,
                          message=f"task {name} of run {run_id} did not reach {states}")

    def cancel_running(self) -> None:
        for run in self.http.get("/api/runs", params={"state": "running", "limit": 500}).json()["items"]:
            self.post(f"/api/runs/{run['id']}/cancel")

    def close(self) -> None:
        self.http.close()


# -- the browser ------------------------------------------------------------------------------------


def chromium(profile: Path) -> webdriver.Chrome:
    """Headless Chromium through Debian's chromedriver (given explicitly: Selenium Manager never runs)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    return driver


def report(driver: webdriver.Chrome, name: str) -> str:
    """What the browser shows (for a failed test): URL, page text, console log, and a screenshot file."""
    lines = [f"===== browser at failure: {name} ====="]
    try:
        lines.append(f"url: {driver.current_url}  title: {driver.title!r}")
        text = driver.find_element(By.TAG_NAME, "body").text
        lines.append(f"--- page text (first 4000 chars) ---\n{text[:4000]}")
    except Exception as exc:  # the browser itself may be what broke
        lines.append(f"(page unavailable: {exc!r})")
    try:
        console = driver.get_log("browser")
        lines.append(f"--- browser console ({len(console)} entries) ---")
        lines.extend(f"{e.get('level')} {e.get('message')}" for e in console)
    except Exception as exc:
        lines.append(f"(console log unavailable: {exc!r})")
    try:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"failure-{name}.png"
        driver.save_screenshot(str(shot))
        lines.append(f"screenshot: {shot}")
    except Exception as exc:
        lines.append(f"(no screenshot: {exc!r})")
    return "\n".join(lines)


def script_errors(driver: webdriver.Chrome) -> list[str]:
    """Uncaught exceptions and console.error calls the pages made (network errors such as an expected 401 or
    409 are not counted: the pages handle those)."""
    return [f"{e.get('source')}: {e.get('message')}" for e in driver.get_log("browser")
            if e.get("level") == "SEVERE" and e.get("source") in ("javascript", "console-api")]


class Page:
    """The browser on the system's web process."""

    def __init__(self, driver: webdriver.Chrome, system: System) -> None:
        self.driver = driver
        self.system = system
        self.base_url = system.base_url

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def login(self, path: str = "/") -> None:
        """Sign in through the login form (reached by asking for ``path``) and land on ``path``."""
        self.open(path)
        self.wait(lambda: self.path() == "/login", message="not sent to the login page")
        self.submit_token(TOKEN)
        self.wait(lambda: self.path() == path.split("?")[0], message=f"not at {path} after signing in")

    def submit_token(self, token: str) -> None:
        field = self.css("#token")
        field.clear()
        field.send_keys(token)
        self.css("#login-form button[type=submit]").click()

    def path(self) -> str:
        return str(self.js("return location.pathname"))

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def css(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[WebElement]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def text(self, selector: str) -> str:
        return str(self.css(selector).text)

    def wait(self, predicate: Callable[[], T], timeout: float = 60, message: str = "page condition not met") -> T:
        return wait_until(predicate, timeout=timeout, interval=0.1, message=message, ignore=FLAKY_DOM)

    def mark(self) -> None:
        """Tag the current document; :meth:`same_document` then tells whether the page was reloaded since."""
        self.js("window.__tideflowTestMark = 'kept'")

    def same_document(self) -> bool:
        return bool(self.js("return window.__tideflowTestMark === 'kept'"))

    def nodes(self) -> dict[str, dict[str, Any]]:
        """The DAG's nodes: task -> {state: data-state, cls: class, fill: computed colour of the box, rect}."""
        script = """
            const out = {};
            for (const g of document.querySelectorAll('#dag svg g.node')) {
              const box = g.querySelector('rect');
              const r = box.getBoundingClientRect();
              out[g.getAttribute('data-task')] = {state: g.getAttribute('data-state'), cls: g.getAttribute('class'),
                fill: getComputedStyle(box).fill, rect: {x: r.x, y: r.y, width: r.width, height: r.height}};
            }
            return out;"""
        return dict(self.js(script))

    def node_states(self) -> dict[str, str]:
        return {name: n["state"] for name, n in self.nodes().items()}

    def bars(self, task: str) -> list[dict[str, Any]]:
        """The Gantt bars of a task: attempt, outcome, label, colour and box, top to bottom."""
        script = """
            return [...document.querySelectorAll('#gantt .bar')].filter(b => b.dataset.task === arguments[0])
              .map(b => { const r = b.getBoundingClientRect();
                return {attempt: Number(b.dataset.attempt), outcome: b.dataset.outcome, text: b.textContent,
                        colour: getComputedStyle(b).backgroundColor, top: r.top, left: r.left, width: r.width,
                        height: r.height}; });"""
        return list(self.js(script, task))
