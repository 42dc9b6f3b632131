"""Browser tests of the web UI on a real system: PostgreSQL, Redis, a Celery worker and ``tideflow web``,
driven through Debian's Chromium and chromedriver (Selenium; nothing is downloaded). See tests/ui/harness.py.

Fixtures:

* ``system``: :class:`~tests.ui.harness.System` - a worker and the web process started; ``.base_url``,
  ``.register(name, yaml)``, ``.start(workflow, params)``, ``.run(id)``, ``.wait_run(id, *states)``,
  ``.post(path)`` (bearer token). Runs still running at the end are cancelled.
* ``browser``: a headless Chromium WebDriver; on failure it prints the page's URL, text and console log and
  saves a screenshot in ``tests/ui/artifacts/``; it always quits.
* ``page``: :class:`~tests.ui.harness.Page` - the browser on the system (``.login()`` signs in).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver

from tests.support.cluster import Cluster
from tests.ui.harness import Page, System, chromium, missing_browser, report, script_errors

_reports = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    rep = yield
    item.stash.setdefault(_reports, {})[rep.when] = rep
    return rep


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(rep.failed for rep in request.node.stash.get(_reports, {}).values())


@pytest.fixture(autouse=True)
def _browser_installed() -> None:
    """A missing browser fails the tests (never skips them: the UI would go untested without anybody noticing)."""
    missing = missing_browser()
    if missing:
        pytest.fail(f"the UI tests need Debian's Chromium and chromedriver ({', '.join(missing)} missing): "
                    "apt-get install chromium chromium-driver", pytrace=False)


@pytest.fixture
def cluster_db_url(pg_url: str) -> str:
    return pg_url


@pytest.fixture
def system(cluster: Cluster, tmp_path: Path) -> Iterator[System]:
    cluster.start_worker()
    _proc, base_url = cluster.start_web()
    system = System(cluster, base_url, tmp_path)
    try:
        yield system
    finally:
        with contextlib.suppress(httpx.HTTPError):
            system.cancel_running()  # stops long sleeps now, rather than when the worker is killed
        system.close()


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[webdriver.Chrome]:
    profile = Path(tempfile.mkdtemp(prefix="tideflow-chromium-"))
    driver = None
    try:
        driver = chromium(profile)
        yield driver
        errors = [] if _failed(request) else script_errors(driver)
        if errors:
            print(report(driver, request.node.name))
            pytest.fail("the pages raised JavaScript errors:\n" + "\n".join(errors), pytrace=False)
    finally:
        try:
            if driver is not None and _failed(request):
                print(report(driver, request.node.name))
        finally:
            try:
                if driver is not None:
                    driver.quit()
            finally:
                shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser: webdriver.Chrome, system: System) -> Page:
    return Page(browser, system)
