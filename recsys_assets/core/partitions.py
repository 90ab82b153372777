"""The one partitioning scheme in Dagster terms: daily partitions of the app's local day (recsys_assets/core/days.py),
and how backfills group them into runs."""

from __future__ import annotations

import os

from dagster import BackfillPolicy, DailyPartitionsDefinition

from recsys_assets.core.days import APP_TIMEZONE, PARTITIONS_START

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
