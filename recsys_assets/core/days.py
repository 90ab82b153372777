"""Days of the app's local time (Asia/Kolkata, as the raw dt= folders are): the one calendar every layer uses.

Plain Python (no Dagster): Spark stages, training workers and the asset layer compute the same bounds;
recsys_assets/core/partitions.py builds Dagster's daily partitions on the same timezone and first day.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import NamedTuple
from zoneinfo import ZoneInfo

APP_TIMEZONE = "Asia/Kolkata"
US_PER_DAY = 86_400_000_000


def _partitions_start() -> str:
    """The first day of the partitions: a deployment setting (RECSYS_PARTITIONS_START, an ISO date), read when the
    code loads; data of earlier days is outside every asset (re-lay it, recsys-import --start-date)."""
    value = os.environ.get("RECSYS_PARTITIONS_START", "2024-01-01")
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise ValueError(f"RECSYS_PARTITIONS_START must be an ISO date (YYYY-MM-DD), got {value!r}") from None


PARTITIONS_START = _partitions_start()


class DayOutsidePartitionsError(ValueError):
    """A day before the first partition (RECSYS_PARTITIONS_START)."""


def check_day(day: str) -> str:
    """`day` if it is a partition of this deployment, else an error that says which setting decides."""
    if day < PARTITIONS_START:
        raise DayOutsidePartitionsError(
            f"day {day} is before the first partition {PARTITIONS_START} (RECSYS_PARTITIONS_START): set it earlier, "
            "or lay the data onto later days"
        )
    return day


class DayWindow(NamedTuple):
    """[start, end) of a day as timezone-aware datetimes in the app's timezone."""

    start: dt.datetime
    end: dt.datetime


def window_of(day: str) -> DayWindow:
    """The day's [start, end): local midnight to the next local midnight (what Dagster's daily partition spans)."""
    tz = ZoneInfo(APP_TIMEZONE)
    d = dt.date.fromisoformat(check_day(day))
    return DayWindow(
        dt.datetime(d.year, d.month, d.day, tzinfo=tz), dt.datetime.combine(d + dt.timedelta(days=1), dt.time(), tz)
    )


def window_micros(window: DayWindow) -> tuple[int, int]:
    """[start, end) of a day as UTC epoch microseconds (what Spark's unix_micros compares against)."""
    return int(window.start.timestamp()) * 1_000_000, int(window.end.timestamp()) * 1_000_000


def shift_day(day: str, days: int) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=days)).isoformat()


def day_number(day: str) -> int:
    """Days since 1970-01-01 of an ISO date."""
    return (dt.date.fromisoformat(day) - dt.date(1970, 1, 1)).days


def last_complete_day(now: dt.datetime) -> str:
    """The most recent day (app time) that has fully ended at `now` (an aware datetime): the newest partition."""
    return (now.astimezone(ZoneInfo(APP_TIMEZONE)).date() - dt.timedelta(days=1)).isoformat()
