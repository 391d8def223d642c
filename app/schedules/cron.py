"""Cron expressions evaluated on a time zone's wall clock, DST included.

croniter walks naive wall-clock times; this module turns each matching wall
time into real instants (UTC) with zoneinfo, so "0 2 * * *" in Europe/Paris
fires at 02:00 Paris time in winter and in summer. Around a DST change:

- A wall time the clocks skip (spring forward: 02:30 in Paris on the last
  Sunday of March) fires shifted forward by the gap, at 03:30, as zoneinfo
  and java.time read such a time. Several skipped times that land on the
  same instant fire once.
- A wall time the clocks repeat (fall back: 02:30 twice on the last Sunday
  of October) fires once, at its first occurrence, like cron for fixed-time
  jobs, so a nightly schedule never runs twice that night. An expression
  that fires every hour (hour field `*`) keeps its cadence and fires in both
  occurrences.
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo

from croniter import CroniterError, croniter

UTC = dt.timezone.utc
ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# Wider than any UTC offset change (DST is one hour; the widest ever is two),
# so every wall time that could map to the next instant is looked at.
SLACK = dt.timedelta(hours=3)


class CronError(ValueError):
    """An expression or time zone poolq cannot schedule; the message says why."""


def parse_cron(expression: str) -> croniter:
    """Five fields (minute hour day-of-month month day-of-week) or an @alias; CronError otherwise."""
    if not isinstance(expression, str) or "\x00" in expression:
        raise CronError("cron must be a string")
    text = " ".join(expression.split())
    if text.startswith("@") and text not in ALIASES:
        raise CronError(f"cron alias {text!r} is not supported; use one of {', '.join(ALIASES)}")
    if not text.startswith("@") and len(text.split(" ")) != 5:
        raise CronError(f"cron {expression!r} must have five fields: minute hour day-of-month month day-of-week")
    try:
        return croniter(text, dt.datetime(2000, 1, 1))
    except (CroniterError, ValueError, KeyError, TypeError) as exc:
        raise CronError(f"cron {expression!r} is not a valid cron expression: {exc}") from None


def normalize_cron(expression: str) -> str:
    parse_cron(expression)
    return " ".join(expression.split())


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def parse_zone(name: str) -> zoneinfo.ZoneInfo:
    """An IANA time zone name ("Europe/Paris", "UTC"); the host's `localtime` is refused."""
    if not isinstance(name, str) or name == "localtime" or name not in _known_zones():
        raise CronError(f"Unknown time zone {name!r}: use an IANA name such as 'Europe/Paris' or 'UTC'")
    return zoneinfo.ZoneInfo(name)


def next_fire(expression: str, zone_name: str, after: dt.datetime) -> dt.datetime:
    """The first instant strictly after `after` at which the schedule fires, in UTC."""
    zone = parse_zone(zone_name)
    every_hour = parse_cron(expression).expanded[1] == ["*"]
    after = after.astimezone(UTC)
    # Wall clock goes backwards at a fall-back, so start early enough that
    # every wall time mapping to an instant after `after` is seen.
    walls = croniter(" ".join(expression.split()), after.astimezone(zone).replace(tzinfo=None) - SLACK)
    best: dt.datetime | None = None
    best_wall: dt.datetime | None = None
    while True:
        try:
            wall = walls.get_next(dt.datetime)
        except CroniterError as exc:  # e.g. "0 0 31 2 *": no such day
            raise CronError(f"cron {expression!r} never fires: {exc}") from None
        if best_wall is not None and wall > best_wall + SLACK:
            return best  # later wall times can only map to later instants
        for instant in _instants(wall, zone, every_hour):
            if instant > after and (best is None or instant < best):
                best, best_wall = instant, wall


def _instants(wall: dt.datetime, zone: zoneinfo.ZoneInfo, every_hour: bool) -> list[dt.datetime]:
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first > second:
        # A skipped wall time: fold=0 reads it with the offset before the
        # jump, which lands it the gap's length later (02:30 -> 03:30).
        return [first]
    # A repeated wall time: fold=0 is the first occurrence.
    return [first, second] if every_hour else [first]

