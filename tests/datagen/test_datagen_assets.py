"""The datagen assets through Dagster (real instance, local Spark): values, metadata, idempotent reruns."""

from __future__ import annotations

import pyarrow.dataset as pads
import pytest
from dagster import AssetKey

from tests.helpers import DAYS, check_results, run_day

pytestmark = pytest.mark.slow


def _rows(store, dataset, day, sub):
    return pads.dataset(store.committed_path(dataset, day, sub), filesystem=store.fs, format="parquet").to_table()


def test_two_days_materialize_with_all_checks_passing(instance, resources, store):
    for day in DAYS[:2]:
        result = run_day(day, instance, resources)
        assert result.success
        assert check_results(result) == {
            "filter_item_loss_within_limits": True,
            "input_losses_within_limits": True,
            "embedding_join_item_loss": True,
            "training_events_expectations": True,
            "events_items_delta_1d_7d": True,
            "item_age_bucket_delta_7d": True,
            "new_items_1d": True,
        }

    day = DAYS[1]
    fstats = store.read_json(store.committed_path("filtered_events", day, "stats.json"))
    tstats = store.read_json(store.committed_path("training_events", day, "stats.json"))
    report = store.read_json(store.committed_path("datagen_monitoring_report", day, "report.json"))
    events = _rows(store, "training_events", day, "events")
    items = _rows(store, "training_events", day, "items")
    filtered = _rows(store, "filtered_events", day, "events")
    quarantine = _rows(store, "filtered_events", day, "quarantine")

    # Written data agrees with the stats and the monitoring dict.
    assert filtered.num_rows == fstats["num_events_post_filters"]
    assert quarantine.num_rows == fstats["num_quarantined_events"] > 0
    assert events.num_rows == tstats["num_final_rows"] == report["num_final_rows"]
    assert items.num_rows == tstats["num_items_post_embed_join"] == report["num_items_post_embed_join"]
    assert set(items.column("item_id").to_pylist()) == set(events.column("item_id").to_pylist())
    assert all(len(e) == 128 for e in items.column("embedding").to_pylist())
    assert tstats["num_items_post_embed_join"] <= fstats["num_unique_items_post_filters"]
    norm = events.column("play_duration_s_norm").to_numpy()
    assert abs(norm.mean()) < 1e-3 and abs(norm.std() - 1) < 1e-2
    assert sum(report["item_age_buckets"].values()) == items.num_rows
    # Both datasets store the catalogue columns once per item; filtered_events' items table counts its events.
    f_items = _rows(store, "filtered_events", day, "items").to_pandas().set_index("item_id")
    assert "item_category" not in filtered.column_names and "item_category" not in events.column_names
    per_item = filtered.to_pandas().groupby("item_id").size()
    assert len(f_items) == fstats["num_unique_items_post_filters"]
    assert (f_items.num_events.sort_index() == per_item.sort_index()).all()
    # Readers see each event widened with its day's item columns, equal to the items table's row for that item.
    from recsys_assets.ml.loader import committed_events_dataset

    wide = (
        committed_events_dataset(store, [day])
        .to_table(columns=["event_id", "item_id", "item_category", "item_video_length_s_norm"])
        .to_pandas()
    )
    assert len(wide) == events.num_rows
    by_item = items.to_pandas().set_index("item_id").loc[wide.item_id]
    assert (wide.item_category.to_numpy() == by_item.item_category.to_numpy()).all()
    assert (wide.item_video_length_s_norm.to_numpy() == by_item.item_video_length_s_norm.to_numpy()).all()
    # The loader's path: the same item strings as dictionary arrays over the day's items.
    fragment = committed_events_dataset(store, [day]).get_fragments()[0]
    plain = next(fragment.to_batches(columns=["item_id", "item_category"]))
    coded = next(fragment.to_batches(columns=["item_id", "item_category"], dictionary_items=True))
    assert str(coded.column(1).type).startswith("dictionary") and coded.column(1).cast("string").equals(plain.column(1))
    assert report["num_new_items_1d"] + report["num_common_items_1d"] == items.num_rows
    assert report["item_diff_1d_delta"] is not None and report["item_diff_7d_delta"] is None

    # Metadata in the instance (what the UI shows and plots).
    rec = instance.get_latest_materialization_event(AssetKey("filtered_events")).asset_materialization
    assert rec.partition == day
    md = rec.metadata
    assert md["dagster/row_count"].value == fstats["num_events_post_filters"]
    assert md["item_loss_percentage_item_moderation"].value == fstats["item_loss_percentage_item_moderation"]
    assert "| item_events |" in md["filter_chain"].value
    assert {c.name for c in md["dagster/column_schema"].value.columns} >= {"event_id", "item_age_days"}
    te_md = instance.get_latest_materialization_event(AssetKey("training_events")).asset_materialization.metadata
    assert te_md["num_final_rows"].value == events.num_rows
    mon_md = instance.get_latest_materialization_event(
        AssetKey("datagen_monitoring_report")
    ).asset_materialization.metadata
    assert mon_md["monitoring_dict"].value["num_final_rows"] == events.num_rows
    assert "(14.0, 30.0]" in mon_md["item_age_buckets"].value


def test_rerunning_a_partition_is_idempotent(instance, resources, store):
    day = DAYS[0]
    first = run_day(day, instance, resources)
    v1 = store.committed_version("training_events", day)
    ids1 = sorted(_rows(store, "training_events", day, "events").column("event_id").to_pylist())
    report1 = store.read_json(store.committed_path("datagen_monitoring_report", day, "report.json"))
    second = run_day(day, instance, resources)
    assert first.success and second.success
    v2 = store.committed_version("training_events", day)
    ids2 = sorted(_rows(store, "training_events", day, "events").column("event_id").to_pylist())
    report2 = store.read_json(store.committed_path("datagen_monitoring_report", day, "report.json"))
    assert v2 != v1 and ids1 == ids2 and len(ids1) == len(set(ids1))
    volatile = {"datagen_start_time", "datagen_end_time", "datagen_run_time", "datagen_run_time_s"}
    assert {k: v for k, v in report1.items() if k not in volatile} == {
        k: v for k, v in report2.items() if k not in volatile
    }
    # No partition accumulates versions: the committed one plus at most the previous one.
    assert len(store.list_versions("training_events", day)) == 2


def test_missing_raw_data_fails_with_clear_error(instance, resources, store):
    import shutil

    shutil.rmtree(store.raw_partition_path("events", DAYS[2]))
    result = run_day(DAYS[2], instance, resources)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "raw events for 2024-03-03" in str(failure.event_specific_data.error)
    assert "does not exist" in str(failure.event_specific_data.error)
