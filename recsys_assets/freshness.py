"""Dagster-native freshness: a FreshnessPolicy on the raw, datagen, training and serving assets, so the UI's
freshness view (asset health) shows late data.

What does what: these asset-level policies say "this asset's newest materialization is too old" (a daily asset whose
next day has not arrived); they are not partition-aware. The per-day deadline, "day D's raw success file is still
missing N hours after D ends", is the raw_data_freshness_sensor's (datagen/automation.py), which also notifies. Both
derive from datagen.yaml's `freshness` section: a day's raw data is due `raw_due_hours_after_day_end` after the day
ends, so on a healthy platform each of these assets is materialized about every 24 h; it warns when its newest
materialization is older than 24 h + the due time, and fails once the alert delay has passed too. The policies are
read when the definitions load (a changed YAML takes effect at the code location's next reload); the sensor reads
the YAML at each tick.
"""

from __future__ import annotations

import datetime as dt
import os
import warnings

from dagster import AssetSpec, Definitions, FreshnessPolicy

from recsys_assets.config.datagen import FreshnessSpec, load_datagen_spec
from recsys_assets.config.files import ENV_VARS

FRESHNESS_GROUPS = ("raw", "datagen", "training", "serving")
DAY_HOURS = 24.0


def daily_freshness_policy(spec: FreshnessSpec) -> FreshnessPolicy:
    warn = DAY_HOURS + spec.raw_due_hours_after_day_end
    return FreshnessPolicy.time_window(
        fail_window=dt.timedelta(hours=warn + max(spec.alert_after_hours, 1.0 / 60)),
        warn_window=dt.timedelta(hours=warn),
    )


def deployment_freshness_spec() -> FreshnessSpec:
    """The `freshness` section of the deployment's datagen YAML (RECSYS_DATAGEN_CONFIG when set, else packaged)."""
    return load_datagen_spec(os.environ.get(ENV_VARS["datagen"]) or None).freshness


def with_freshness(defs: Definitions, spec: FreshnessSpec) -> Definitions:
    policy = daily_freshness_policy(spec)

    def attach(s: AssetSpec) -> AssetSpec:
        return s.replace_attributes(freshness_policy=policy) if s.group_name in FRESHNESS_GROUPS else s

    with warnings.catch_warnings():  # "preview" in the pinned Dagster release; tests/test_freshness.py holds its result
        warnings.simplefilter("ignore")
        return defs.map_resolved_asset_specs(func=attach)  # every spec, the raw (external) ones included
