"""Next-run computation: wall-clock time in the schedule's zone, across DST changes."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from app.schedules.cron import CronError, next_fire, normalize_cron, parse_zone

UTC = dt.timezone.utc
PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def runs(expression: str, zone: str, start: dt.datetime, count: int) -> list[str]:
    out, at = [], start
    for _ in range(count):
        at = next_fire(expression, zone, at)
        assert at.tzinfo is UTC
        out.append(at.astimezone(zoneinfo.ZoneInfo(zone)).isoformat(timespec="minutes"))
    return out


def test_daily_in_a_zone_is_its_wall_clock_in_winter_and_summer():
    assert runs("0 2 * * *", "Europe/Paris", dt.datetime(2025, 1, 10, tzinfo=UTC), 2) == [
        "2025-01-10T02:00+01:00", "2025-01-11T02:00+01:00"]
    assert runs("0 2 * * *", "Europe/Paris", dt.datetime(2025, 7, 9, 12, tzinfo=UTC), 1) == ["2025-07-10T02:00+02:00"]
    # 01:00 UTC in winter, 00:00 UTC in summer.
    assert next_fire("0 2 * * *", "Europe/Paris", dt.datetime(2025, 1, 10, tzinfo=UTC)).hour == 1
    assert next_fire("0 2 * * *", "Europe/Paris", dt.datetime(2025, 7, 9, 12, tzinfo=UTC)).hour == 0


def test_strictly_after_the_given_instant():
    at = dt.datetime(2025, 1, 10, 1, 0, tzinfo=UTC)  # exactly 02:00 Paris
    assert next_fire("0 2 * * *", "Europe/Paris", at) == at + dt.timedelta(days=1)
    assert next_fire("0 2 * * *", "Europe/Paris", at - dt.timedelta(microseconds=1)) == at


def test_spring_forward_a_skipped_time_fires_once_shifted_by_the_gap():
    # 2025-03-30 in Paris: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    assert runs("30 2 * * *", "Europe/Paris", dt.datetime(2025, 3, 29, 12, tzinfo=UTC), 3) == [
        "2025-03-30T03:30+02:00", "2025-03-31T02:30+02:00", "2025-04-01T02:30+02:00"]
    # Every 30 minutes: 02:00 and 02:30 land on 03:00 and 03:30, which also match; each fires once.
    assert runs("*/30 * * * *", "Europe/Paris", dt.datetime(2025, 3, 30, 0, 10, tzinfo=UTC), 4) == [
        "2025-03-30T01:30+01:00", "2025-03-30T03:00+02:00", "2025-03-30T03:30+02:00", "2025-03-30T04:00+02:00"]


def test_fall_back_a_nightly_schedule_fires_once_and_an_hourly_one_keeps_its_cadence():
    # 2025-10-26 in Paris: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    assert runs("30 2 * * *", "Europe/Paris", dt.datetime(2025, 10, 25, 12, tzinfo=UTC), 3) == [
        "2025-10-26T02:30+02:00", "2025-10-27T02:30+01:00", "2025-10-28T02:30+01:00"]
    hourly = runs("0 * * * *", "Europe/Paris", dt.datetime(2025, 10, 25, 23, 30, tzinfo=UTC), 3)
    assert hourly == ["2025-10-26T02:00+02:00", "2025-10-26T02:00+01:00", "2025-10-26T03:00+01:00"]
    # Starting inside the repeated hour (second pass) goes forward in real time, never back.
    inside = dt.datetime(2025, 10, 26, 1, 10, tzinfo=UTC)  # 02:10 CET, the second 02:10
    assert next_fire("30 2 * * *", "Europe/Paris", inside).astimezone(PARIS).isoformat(
        timespec="minutes") == "2025-10-27T02:30+01:00"
    assert next_fire("*/15 * * * *", "Europe/Paris", inside) == dt.datetime(2025, 10, 26, 1, 15, tzinfo=UTC)


def test_southern_hemisphere_and_aliases():
    # Sydney leaves DST on 2025-04-06 (03:00 AEDT -> 02:00 AEST).
    assert runs("@daily", "Australia/Sydney", dt.datetime(2025, 4, 4, 12, tzinfo=UTC), 3) == [
        "2025-04-05T00:00+11:00", "2025-04-06T00:00+11:00", "2025-04-07T00:00+10:00"]
    assert normalize_cron("  0   2 *  * 1-5 ") == "0 2 * * 1-5"


@pytest.mark.parametrize("expression", ["", "0 2 * *", "0 2 * * * *", "61 * * * *", "*/0 * * * *", "@reboot",
                                        "nightly", "0 2 * * \x00"])
def test_bad_expressions_are_refused(expression):
    with pytest.raises(CronError):
        normalize_cron(expression)


def test_an_expression_that_never_fires_is_refused():
    with pytest.raises(CronError, match="never fires"):
        next_fire("0 0 31 2 *", "UTC", dt.datetime(2025, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "localtime", "../etc/passwd", "/etc/localtime", "\x00"])
def test_unknown_zones_are_refused(zone):
    with pytest.raises(CronError, match="time zone"):
        parse_zone(zone)
