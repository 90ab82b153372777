"""Each datagen check passes on normal data and fails on data crafted to break it."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml
from dagster import AssetKey

from recsys_assets.config.datagen import DEFAULT_CONFIG_PATH
from recsys_assets.core.datasets import publish_partition
from tests.helpers import DAYS, check_results, commit_monitoring_report, judge_day_checks, run_day

pytestmark = pytest.mark.slow


def _config(tmp_path, mutate) -> str:
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    mutate(raw)
    path = tmp_path / "datagen.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_filter_item_loss_breach_fails_and_blocks_downstream(tmp_path, instance, resources):
    path = _config(tmp_path, lambda r: r["filters"][-1].update(max_item_loss_pct=1.0))  # item_events loses more
    result = run_day(DAYS[0], instance, resources, config_path=path)
    assert check_results(result) == {"filter_item_loss_within_limits": False, "input_losses_within_limits": True}
    ev = [e for e in result.get_asset_check_evaluations() if e.check_name == "filter_item_loss_within_limits"][0]
    assert "item_events" in ev.description and "> 1.0%" in ev.description
    assert ev.description.startswith("WITHHELD from downstream") and "nothing is readable" in ev.description
    assert not result.success
    assert instance.get_latest_materialization_event(AssetKey("training_events")) is None
    # The staged version stays unreadable: no later run can read it either.
    store = resources["storage"].store
    assert not store.is_committed("filtered_events", DAYS[0])
    assert store.gate_state("filtered_events", DAYS[0]).failed_checks == ["filter_item_loss_within_limits"]


def test_embedding_join_loss_breach_fails_and_blocks_report(tmp_path, instance, resources):
    path = _config(tmp_path, lambda r: r["thresholds"].update(max_item_loss_pct_embedding_join=0.0))
    result = run_day(DAYS[0], instance, resources, config_path=path)
    checks = check_results(result)
    assert checks["filter_item_loss_within_limits"] is True
    assert checks["embedding_join_item_loss"] is False
    assert instance.get_latest_materialization_event(AssetKey("datagen_monitoring_report")) is None


def test_expectations_fail_on_bad_training_rows(instance, resources, store):
    day = DAYS[0]
    assert run_day(day, instance, resources).success
    good = store.committed_version("training_events", day)
    # Stage a new version of the partition (as a rerun would) with a negative duration, a null user id, a 64-d
    # embedding and a non-finite normalised value.
    events = pads.dataset(store.committed_path("training_events", day, "events"), format="parquet").to_table()
    items = pads.dataset(store.committed_path("training_events", day, "items"), format="parquet").to_table()
    pdur = events["play_duration_s"].to_numpy().copy()
    pdur[0] = -5.0
    users = events["user_id"].to_pylist()
    users[1] = None
    events = events.set_column(events.schema.get_field_index("play_duration_s"), "play_duration_s", pa.array(pdur))
    events = events.set_column(events.schema.get_field_index("user_id"), "user_id", pa.array(users, pa.string()))
    norm = events["watch_ratio_norm"].to_numpy().copy()
    norm[2] = np.inf
    events = events.set_column(
        events.schema.get_field_index("watch_ratio_norm"),
        "watch_ratio_norm",
        pa.array(norm, events.schema.field("watch_ratio_norm").type),
    )
    emb = items["embedding"].to_pylist()
    emb[0] = emb[0][:64]
    items = items.set_column(
        items.schema.get_field_index("embedding"), "embedding", pa.array(emb, items.schema.field("embedding").type)
    )
    stats = store.read_json(store.committed_path("training_events", day, "stats.json"))
    v = store.new_version()
    for sub, table in (("events", events), ("items", items)):
        os.makedirs(store.version_path("training_events", day, v, sub))
        pq.write_table(table, store.version_path("training_events", day, v, sub, "part-0.parquet"))
    store.write_json_atomic(store.version_path("training_events", day, v, "stats.json"), stats)
    publish_partition(store, "training_events", day, v)

    result = judge_day_checks(["training_events_expectations"], day, resources)
    ev = result.get_asset_check_evaluations()[0]
    assert not ev.passed
    for failed in (
        "expect_column_values_to_be_between(play_duration_s)",
        "expect_column_values_to_not_be_null(user_id)",
        "training_items.unexpected_rows_expectation",
        "training_events.unexpected_rows_expectation",
    ):
        assert failed in ev.description
    assert ev.metadata["num_failed_expectations"].value == 4
    assert ev.metadata["judged_version"].value == v
    # Withheld: readers keep the good version.
    assert store.committed_version("training_events", day) == good
    assert f"version {v} withheld" in ev.description


def _commit_stats(store, dataset, day, stats) -> str:
    v = store.new_version()
    store.write_json_atomic(store.version_path(dataset, day, v, "stats.json"), stats)
    store.commit(dataset, day, v)
    return v


def test_events_items_delta_fails_against_a_very_different_previous_day(instance, resources, store):
    day = DAYS[1]
    assert run_day(day, instance, resources).success
    stats = store.read_json(store.committed_path("training_events", day, "stats.json"))
    # Yesterday's committed version: half today's events, same items.
    _commit_stats(store, "training_events", DAYS[0], {**stats, "num_final_rows": stats["num_final_rows"] // 2})
    result = judge_day_checks(["events_items_delta_1d_7d"], day, resources)
    ev = result.get_asset_check_evaluations()[0]
    assert not ev.passed and "events 1d +" in ev.description and "items 1d" not in ev.description
    # Within the threshold: passes.
    _commit_stats(store, "training_events", DAYS[0], {**stats, "num_final_rows": int(stats["num_final_rows"] * 0.97)})
    assert judge_day_checks(["events_items_delta_1d_7d"], day, resources).get_asset_check_evaluations()[0].passed
    # A newer version of yesterday that is withheld (staged, failed) is no baseline: the committed one still is.
    v = store.new_version()
    store.write_json_atomic(
        store.version_path("training_events", DAYS[0], v, "stats.json"), {**stats, "num_final_rows": 1}
    )
    publish_partition(store, "training_events", DAYS[0], v)
    store.record_verdict("training_events", DAYS[0], v, "embedding_join_item_loss", False)
    assert judge_day_checks(["events_items_delta_1d_7d"], day, resources).get_asset_check_evaluations()[0].passed


@pytest.mark.parametrize("shift, passes", [(0.02, True), (0.5, False)])
def test_item_age_bucket_delta_7d(instance, resources, store, shift, passes):
    rng = np.random.default_rng(0)
    base_ages = rng.uniform(0.1, 89, 1000)
    week_ago = commit_monitoring_report(store, "2024-02-24", [f"i{i}" for i in range(1000)], base_ages)
    # Today: `shift` of the items become 0-1 day old.
    ages = base_ages.copy()
    ages[: int(shift * 1000)] = 0.5
    commit_monitoring_report(store, "2024-03-02", [f"i{i}" for i in range(1000)], ages, prev_7d=week_ago)
    ev = judge_day_checks(["item_age_bucket_delta_7d"], "2024-03-02", resources).get_asset_check_evaluations()[0]
    assert ev.passed is passes
    if not passes:
        assert "(0.0, 1.0]" in ev.description


@pytest.mark.parametrize("n_new, passes", [(50, True), (10, False)])
def test_new_items_1d(instance, resources, store, n_new, passes):
    yesterday = [f"i{i}" for i in range(1000)]
    today = yesterday[n_new:] + [f"new{i}" for i in range(n_new)]
    commit_monitoring_report(store, "2024-03-02", today, np.full(1000, 5.0), prev_ids=yesterday)
    ev = judge_day_checks(["new_items_1d"], "2024-03-02", resources).get_asset_check_evaluations()[0]
    assert ev.passed is passes
    assert ev.metadata["new_items_pct_1d"].value == pytest.approx(100 * n_new / 1000)
