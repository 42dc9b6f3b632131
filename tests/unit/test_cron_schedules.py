"""The pure scheduling functions (app/scheduling.py): fire times (cronsim, DST through zoneinfo), catch-up and
its window, start/end, jitter, and the validation of a ``schedule:``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim

from app.definitions import parse_definition
from app.errors import DefinitionError
from app.scheduling import (
    ScheduleSpec,
    backfill_times,
    describe,
    fire_times,
    jitter_offset,
    parse_schedules,
    plan_fires,
)

BERLIN = ZoneInfo("Europe/Berlin")


def test_a_year_of_fire_times_in_berlin_matches_the_library_and_handles_both_dst_transitions() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ours = []
    for t in fire_times("30 2 * * *", "Europe/Berlin", start):
        if t >= datetime(2027, 1, 1, tzinfo=UTC):
            break
        ours.append(t)
    lib = []
    for t in CronSim("30 2 * * *", start.astimezone(BERLIN)):
        if t >= datetime(2027, 1, 1, tzinfo=UTC):
            break
        lib.append(t.astimezone(UTC))
    assert ours == lib and len(ours) == 365
    assert all(t.tzinfo is UTC for t in ours)
    local = [t.astimezone(BERLIN) for t in ours]
    # 2026-03-29: 02:30 does not exist in Berlin (clocks jump 02:00 -> 03:00): it fires once, at 03:00 local
    march29 = [t for t in local if t.date().isoformat() == "2026-03-29"]
    assert [(t.hour, t.minute) for t in march29] == [(3, 0)]
    # 2026-10-25: 02:30 happens twice (03:00 -> 02:00): a daily schedule fires once
    oct25 = [t for t in local if t.date().isoformat() == "2026-10-25"]
    assert len(oct25) == 1 and (oct25[0].hour, oct25[0].minute) == (2, 30)
    # every other day at 02:30 local: UTC 01:30 in winter, 00:30 in summer
    assert {(t.hour, t.minute) for t in ours} == {(1, 30), (0, 30), (1, 0)}
    # strictly increasing, never two on one local day
    assert all(a < b for a, b in zip(ours, ours[1:], strict=False))


def test_hourly_fire_times_over_the_autumn_transition_are_distinct_instants() -> None:
    times = list(backfill_times(ScheduleSpec(cron="0 * * * *", timezone="Europe/Berlin"),
                                datetime(2026, 10, 24, 22, tzinfo=UTC), datetime(2026, 10, 25, 3, tzinfo=UTC)))
    assert times == [datetime(2026, 10, 24, 22, tzinfo=UTC) + timedelta(hours=h) for h in range(6)]


def _spec(**kw: object) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"cron": "0 * * * *", **kw})


NOW = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)
DOWN_SINCE = datetime(2026, 6, 1, 7, 30, tzinfo=UTC)  # fire times 08:00 .. 12:00 were missed (12:00 on time)


def test_catchup_all_fires_every_missed_time_within_the_window() -> None:
    plan = plan_fires(_spec(catchup="all", catchup_window=3.5 * 3600), "s", DOWN_SINCE, NOW)
    assert [t.hour for t in plan.fire] == [9, 10, 11, 12]
    assert [t.hour for t, _ in plan.skip] == [8] and "outside catchup_window" in plan.skip[0][1]
    assert plan.cursor == datetime(2026, 6, 1, 12, tzinfo=UTC)


def test_catchup_latest_fires_only_the_newest() -> None:
    plan = plan_fires(_spec(catchup="latest"), "s", DOWN_SINCE, NOW - timedelta(minutes=5))
    assert [t.hour for t in plan.fire] == [11]
    assert [t.hour for t, _ in plan.skip] == [8, 9, 10] and "catchup: latest" in plan.skip[0][1]


def test_catchup_none_fires_only_what_is_on_time() -> None:
    plan = plan_fires(_spec(catchup="none"), "s", DOWN_SINCE, NOW)
    assert [t.hour for t in plan.fire] == [12]
    assert [t.hour for t, _ in plan.skip] == [8, 9, 10, 11] and all("catchup: none" in r for _, r in plan.skip)


def test_nothing_due_keeps_the_cursor() -> None:
    cursor = datetime(2026, 6, 1, 12, tzinfo=UTC)
    plan = plan_fires(_spec(), "s", cursor, NOW)
    assert plan.fire == [] and plan.skip == [] and plan.cursor == cursor


def test_start_and_end_bound_the_fire_times() -> None:
    plan = plan_fires(_spec(catchup="all", start="2026-06-01T10:00:00Z", end="2026-06-01T11:00:00Z"), "s",
                      DOWN_SINCE, NOW)
    assert [t.hour for t in plan.fire] == [10, 11] and plan.skip == []


def test_jitter_delays_a_fire_time_the_same_in_every_process() -> None:
    t = datetime(2026, 6, 1, 12, tzinfo=UTC)
    off = jitter_offset("s", t, 60)
    assert 0 <= off <= 60 and off == jitter_offset("s", t, 60) and off != jitter_offset("other", t, 60)
    assert plan_fires(_spec(jitter=60), "s", t - timedelta(hours=1) + timedelta(seconds=1),
                      t + timedelta(seconds=off - 0.01)).fire == []
    assert plan_fires(_spec(jitter=60), "s", t - timedelta(hours=1) + timedelta(seconds=1),
                      t + timedelta(seconds=off)).fire == [t]


def test_schedule_names_default_to_the_workflow_and_must_differ() -> None:
    assert [s.name for s in parse_schedules({"cron": "0 2 * * *"}, "etl")] == ["etl"]
    assert [s.name for s in parse_schedules([{"cron": "0 2 * * *", "name": "a"},
                                             {"cron": "0 3 * * *", "name": "b"}], "etl")] == ["a", "b"]
    with pytest.raises(ValueError, match="used twice"):
        parse_schedules([{"cron": "0 2 * * *"}, {"cron": "0 3 * * *"}], "etl")


@pytest.mark.parametrize(("schedule", "message"), [
    ({"cron": "61 * * * *"}, "schedule: cron '61 * * * *'"),
    ({"cron": "0 2 * * *", "timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
    ({"cron": "0 2 * * *", "catchup": "some"}, "schedule.catchup"),
    ({"cron": "0 2 * * *", "overlap": "queue"}, "schedule.overlap"),
    ({"cron": "0 2 * * *", "params": {"nope": 1}}, "schedule 'etl': params"),
])
def test_a_bad_schedule_is_a_one_line_definition_error(schedule: dict[str, object], message: str) -> None:
    with pytest.raises(DefinitionError) as err:
        parse_definition({"name": "etl", "params": {"day": "x"}, "schedule": schedule,
                          "tasks": [{"name": "a", "type": "shell", "command": "echo {{ schedule.time }}"}]})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_schedule_placeholders_are_checked_at_registration() -> None:
    with pytest.raises(DefinitionError, match="schedule.date"):
        parse_definition({"name": "etl", "tasks": [{"name": "a", "type": "shell",
                                                    "command": "echo {{ schedule.date }}"}]})


def test_human_text() -> None:
    assert describe("0 2 * * *") == "At 02:00 AM"
