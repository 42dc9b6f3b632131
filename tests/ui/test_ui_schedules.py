"""The schedules page: reached from the nav; each schedule's cron and its meaning, next fire times and last runs;
pause, resume and trigger, each confirmed first (Cancel changes nothing)."""

from __future__ import annotations

from tests.ui.harness import Page, System

NIGHTLY = """
name: nightly
params: {day: "x"}
schedule: {cron: "30 2 * * *", timezone: "Europe/Berlin", params: {day: "sched"}}
tasks:
  - {name: t, type: shell, command: "echo {{ schedule.time }} {{ params.day }}"}
"""


def schedule(system: System) -> dict:
    [s] = system.http.get("/api/schedules").json()
    return dict(s)


def confirm(page: Page, yes: bool) -> None:
    page.wait(lambda: page.css("#confirm-dialog").is_displayed(), message="no confirmation dialog")
    page.css("#confirm-yes" if yes else "#confirm-no").click()
    page.wait(lambda: not page.all("#confirm-dialog"), message="the dialog stayed open")


def test_schedules_page_shows_next_fire_times_and_pauses_resumes_triggers(page: Page, system: System) -> None:
    system.register("nightly", NIGHTLY)
    page.login("/")
    page.css('.topbar nav a[href="/schedules"]').click()
    row_css = '#schedules-body tr[data-schedule="nightly"]'
    page.wait(lambda: page.path() == "/schedules" and page.all(row_css), message="the nav did not reach schedules")
    row = page.css(row_css)
    assert "30 2 * * * (Europe/Berlin)" in row.text and "At 02:30 AM" in row.text
    assert len(page.all(f"{row_css} td.next li")) == 3
    assert page.text(f"{row_css} .schedule-state") == "active"

    page.css(f'{row_css} button[data-action="pause"]').click()
    assert "No fire time runs until it is resumed" in page.text("#confirm-message")
    confirm(page, yes=False)  # cancelled: nothing changes
    assert schedule(system)["paused"] is False
    page.css(f'{row_css} button[data-action="pause"]').click()
    confirm(page, yes=True)
    page.wait(lambda: page.css(row_css).get_attribute("data-paused") == "true"
              and page.text(f"{row_css} .schedule-state") == "paused", message="pause did not show")
    assert schedule(system)["paused"] is True and page.text(f"{row_css} td.next") == "—"
    assert page.text(f"{row_css} .paused-by").startswith("by env at ")

    page.css(f'{row_css} button[data-action="resume"]').click()
    confirm(page, yes=True)
    page.wait(lambda: page.css(row_css).get_attribute("data-paused") == "false", message="resume did not show")
    assert schedule(system)["paused"] is False

    page.css(f'{row_css} button[data-action="trigger"]').click()
    confirm(page, yes=True)
    page.wait(lambda: "Started run #" in page.text("#notice"), message="trigger did not say which run")
    run_id = int(page.text("#notice").split("#")[1].rstrip("."))
    run = system.wait_run(run_id, "succeeded")
    assert run["schedule"] == "nightly" and run["params"] == {"day": "sched"}
    assert run["tasks"][0]["result"].endswith(" sched") and run["tasks"][0]["result"].startswith(
        run["schedule_time"][:19])
    page.wait(lambda: page.all(f'{row_css} a.fire-run[href="/runs/{run_id}"]'), message="the last run is not listed")
