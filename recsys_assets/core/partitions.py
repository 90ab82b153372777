"""The one partitioning scheme: a day of the app's local time (Asia/Kolkata), as the raw dt= folders are."""

from __future__ import annotations

import os

from dagster import BackfillPolicy, DailyPartitionsDefinition, TimeWindow

APP_TIMEZONE = "Asia/Kolkata"


def _partitions_start() -> str:
    """The first day of the partitions: a deployment setting (RECSYS_PARTITIONS_START, an ISO date), read when the
    code location loads; data of earlier days is outside every asset (re-lay it, recsys-import --start-date)."""
    import datetime as dt

    value = os.environ.get("RECSYS_PARTITIONS_START", "2024-01-01")
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise ValueError(f"RECSYS_PARTITIONS_START must be an ISO date (YYYY-MM-DD), got {value!r}") from None


PARTITIONS_START = _partitions_start()
US_PER_DAY = 86_400_000_000

daily_partitions = DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone=APP_TIMEZONE)

# One run per day in backfills, for assets judged by separate partitioned @asset_checks (training, indexes,
# serving): a single-run range backfill records one check evaluation without a partition (docs/backfills.md).
PER_DAY = BackfillPolicy.multi_run(max_partitions_per_run=1)

# The datagen Spark assets take a range of days per run (one Spark session, checks judged per day inside the asset,
# recsys_assets/datagen/ranges.py). How many days a backfill puts in one run is a deployment setting, read when the
# code location loads: RECSYS_DATAGEN_DAYS_PER_RUN (default 7).
DATAGEN_DAYS_PER_RUN = int(os.environ.get("RECSYS_DATAGEN_DAYS_PER_RUN", "7"))
if DATAGEN_DAYS_PER_RUN < 1:
    raise ValueError(f"RECSYS_DATAGEN_DAYS_PER_RUN must be a positive number of days, got {DATAGEN_DAYS_PER_RUN}")
DATAGEN_BACKFILL = BackfillPolicy.multi_run(max_partitions_per_run=DATAGEN_DAYS_PER_RUN)


def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """The run tags of one run over the partition key range [first, last], as a backfill with a range policy sets
    them (Dagster exports no public constant for these names)."""
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


def window_micros(window: TimeWindow) -> tuple[int, int]:
    """[start, end) of a partition as UTC epoch microseconds (what Spark's unix_micros compares against)."""
    return int(window.start.timestamp()) * 1_000_000, int(window.end.timestamp()) * 1_000_000


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


def window_of(day: str) -> TimeWindow:
    return daily_partitions.time_window_for_partition_key(check_day(day))


def shift_day(day: str, days: int) -> str:
    import datetime as dt

    return (dt.date.fromisoformat(day) + dt.timedelta(days=days)).isoformat()


def last_complete_day(now) -> str:
    """The most recent day (app time) that has fully ended at `now` (an aware datetime): the newest partition."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    return (now.astimezone(ZoneInfo(APP_TIMEZONE)).date() - dt.timedelta(days=1)).isoformat()
