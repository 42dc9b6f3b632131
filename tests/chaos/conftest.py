"""Collects the results of the chaos campaigns a test session ran and prints their summary table at the end."""

from __future__ import annotations

import pytest

from tests.chaos.campaign import CampaignResult
from tests.chaos.report import bounds_lines, details, plain_table

_results = pytest.StashKey[list[CampaignResult]]()


@pytest.fixture
def campaign_results(request: pytest.FixtureRequest) -> list[CampaignResult]:
    """Append each campaign's result here to have it in the session's summary table."""
    return request.config.stash.setdefault(_results, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    results = config.stash.get(_results, [])
    if not results:
        return
    terminalreporter.section("chaos campaigns")
    terminalreporter.write_line(plain_table(results))
    for line in bounds_lines(results[0].settings, results[0].config.workload):
        terminalreporter.write_line(line)
    for r in results:
        if not r.ok:
            for line in details(r):
                terminalreporter.write_line(line)
