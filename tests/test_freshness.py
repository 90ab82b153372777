"""The daily FreshnessPolicy on the raw, datagen, training and serving assets (recsys_assets/freshness.py)."""

from __future__ import annotations

import datetime as dt

from recsys_assets.config.datagen import FreshnessSpec, load_datagen_spec
from recsys_assets.definitions import defs
from recsys_assets.freshness import FRESHNESS_GROUPS, daily_freshness_policy


def test_the_daily_chain_carries_the_policy_derived_from_datagen_yaml():
    f = load_datagen_spec().freshness
    assert (f.raw_due_hours_after_day_end, f.alert_after_hours) == (5.0, 3.0)  # the packaged datagen.yaml
    by_key = {"/".join(s.key.path): s for s in defs.resolve_all_asset_specs()}
    with_policy = {k for k, s in by_key.items() if s.freshness_policy is not None}
    assert with_policy == {k for k, s in by_key.items() if s.group_name in FRESHNESS_GROUPS}
    assert {"raw/events", "training_events", "ranker_model", "feed"} <= with_policy  # external raw specs included
    assert "offline_evaluation" not in with_policy and "storage_retention" not in with_policy
    policy = by_key["feed"].freshness_policy
    # warn once the newest materialization is older than a day + the raw data's due time, fail after the alert delay
    assert policy.warn_window.to_timedelta() == dt.timedelta(hours=29)
    assert policy.fail_window.to_timedelta() == dt.timedelta(hours=32)


def test_policy_windows_follow_the_spec_and_fail_after_warn():
    p = daily_freshness_policy(FreshnessSpec(raw_due_hours_after_day_end=2.5, alert_after_hours=0))
    assert p.warn_window.to_timedelta() == dt.timedelta(hours=26.5)
    assert p.fail_window.to_timedelta() > p.warn_window.to_timedelta()
