"""Range runs of the datagen assets (what a backfill launches): one run, one Spark session, each day written,
judged and committed on its own, with per-day materializations and check evaluations in the real instance."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckKey, AssetKey, AssetRecordsFilter, build_sensor_context

from recsys_assets.alerts.sensors import check_failure_sensor
from recsys_assets.core.partitions import DATAGEN_BACKFILL
from recsys_assets.datagen.automation import monitoring_summary_sensor
from recsys_assets.datagen.day_checks import DAY_CHECKS
from tests.helpers import DAYS, defs_with, run_day, run_range

pytestmark = pytest.mark.slow

# What differs between two computations of the same day: when and how long, and the version written.
VOLATILE = {"started_at", "finished_at", "run_time_s"}


def _stats(store, dataset: str, day: str) -> dict:
    stats = store.read_json(store.committed_path(dataset, day, "stats.json"))
    if "expectations" in stats:  # judged on each run's own version: the rows compare, the version names differ
        stats["expectations"] = stats["expectations"]["rows"]
    return {k: v for k, v in stats.items() if k not in VOLATILE}


def _latest_metadata(instance, asset: str, day: str) -> dict:
    (record,) = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[day]), limit=1
    ).records
    return record.asset_materialization.metadata


def _evaluations(instance, asset: str, check: str) -> dict[str, str]:
    """The latest recorded status of a check per partition."""
    history = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(AssetKey(asset), check), limit=50
    )
    out: dict[str, str] = {}
    for record in history:  # newest first
        out.setdefault(record.partition, record.status.value)
    return out


def test_backfill_policy_puts_up_to_seven_days_in_a_run():
    defs = defs_with({})
    for asset in ("filtered_events", "training_events", "datagen_monitoring_report"):
        assert defs.resolve_assets_def(asset).backfill_policy == DATAGEN_BACKFILL
    assert DATAGEN_BACKFILL.max_partitions_per_run == 7


def test_a_range_run_commits_each_day_as_one_day_runs_would(instance, resources, store, raw_root, tmp_path):
    result = run_range("datagen_job", DAYS[0], DAYS[2], instance, resources)
    assert result.success
    for day in DAYS:
        for dataset in ("filtered_events", "training_events", "datagen_monitoring_report"):
            assert store.is_committed(dataset, day), (dataset, day)
        # The UI's partition view: each day's latest materialization carries that day's own tables and counts.
        meta = _latest_metadata(instance, "filtered_events", day)
        stats = store.read_json(store.committed_path("filtered_events", day, "stats.json"))
        assert meta["dagster/row_count"].value == stats["num_events_post_filters"]
        assert meta["version"].value == store.committed_version("filtered_events", day)
        assert "| item_events |" in meta["filter_chain"].value
        assert (
            _latest_metadata(instance, "training_events", day)["dagster/row_count"].value
            == (store.read_json(store.committed_path("training_events", day, "stats.json"))["num_final_rows"])
        )
    # The daily summary (info route) goes out once per day of the range, not for the range's own record.
    with build_sensor_context(instance=instance, definitions=defs_with(resources), resources=resources) as ctx:
        assert monitoring_summary_sensor(ctx).skip_message == "queued 3 summaries"
    summaries = [n for n in resources["notifier"].outbox() if n["route"] == "info"]
    assert sorted(n["fields"]["partition"] for n in summaries) == DAYS
    # Every check of every datagen asset has its own evaluation for every day of the range, none unpartitioned.
    for check in DAY_CHECKS:
        assert _evaluations(instance, check.dataset, check.name) == dict.fromkeys(DAYS, "SUCCEEDED"), check.name

    # The same days computed by one-day runs in a separate data root give the same stats.
    other = tmp_path / "one_day_runs"
    shutil.copytree(raw_root, other)
    from resources.storage import StorageResource
    from resources.store import DatasetStore

    one_day = {**resources, "storage": StorageResource(data_root=str(other))}
    for day in DAYS[:2]:
        assert run_day(day, instance, one_day).success
    for day in DAYS[:2]:
        for dataset in ("filtered_events", "training_events"):
            assert _stats(DatasetStore(str(other)), dataset, day) == _stats(store, dataset, day), (dataset, day)


def _cut_embeddings(store, day: str, keep: float = 0.9) -> None:
    path = Path(store.raw_partition_path("item_embeddings", day)) / "part-00000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(0, int(table.num_rows * keep)), path)  # 10% of items lose their embedding


def test_a_day_failing_a_blocking_check_in_a_range_is_withheld_alerted_and_redone(instance, resources, store, tmp_path):
    d1, d2, d3 = DAYS
    emb_dir = Path(store.raw_partition_path("item_embeddings", d2))
    backup = tmp_path / "embeddings_backup"
    shutil.copytree(emb_dir, backup)
    _cut_embeddings(store, d2)

    result = run_range("datagen_job", d1, d3, instance, resources)
    assert not result.success
    # filtered_events is unaffected: every day committed. training_events stops at the failed day.
    assert all(store.is_committed("filtered_events", d) for d in DAYS)
    assert store.is_committed("training_events", d1)
    assert store.gate_state("training_events", d2).state == "withheld"
    assert not store.is_committed("training_events", d3) and store.read_candidate("training_events", d3) is None
    failure = next(e for e in result.all_events if e.is_step_failure and e.step_key == "training_events")
    message = str(failure.event_specific_data.error.message)
    assert f"{d2} failed blocking check(s) embedding_join_item_loss" in message
    assert f"Committed in this run: {d1}; not started: {d3}" in message
    # Per day: the failed check for d2 only; the report never ran (its upstream step failed).
    assert _evaluations(instance, "training_events", "embedding_join_item_loss") == {
        d1: "SUCCEEDED",
        d2: "FAILED",
        d3: "PLANNED",
    } or _evaluations(instance, "training_events", "embedding_join_item_loss") == {d1: "SUCCEEDED", d2: "FAILED"}
    assert instance.get_latest_materialization_event(AssetKey("datagen_monitoring_report")) is None

    # The alert sensor sees the failures of d2 only (the blocking one, and the WARN delta its lost events cause),
    # one notification each, naming the day.
    notifier = resources["notifier"]
    with build_sensor_context(instance=instance, definitions=defs_with(resources), resources=resources) as ctx:
        check_failure_sensor(ctx)
    queued = notifier.outbox()
    assert {n["fields"]["partition"] for n in queued} == {d2}
    (blocking,) = [n for n in queued if "embedding_join_item_loss" in n["title"]]
    assert "WITHHELD from downstream" in blocking["body"]

    # Fix the input and re-launch what failed or never ran, per asset, as a backfill's "re-execute failed" does:
    # training_events d2..d3, then the report d1..d3 (its step never ran). Committed days are left as they are.
    shutil.rmtree(emb_dir)
    shutil.copytree(backup, emb_dir)
    kept = {d: store.committed_version("filtered_events", d) for d in DAYS}
    d1_version = store.committed_version("training_events", d1)
    assert run_range("datagen_job", d2, d3, instance, resources, [AssetKey("training_events")]).success
    assert run_range("datagen_job", d1, d3, instance, resources, [AssetKey("datagen_monitoring_report")]).success
    assert store.committed_version("training_events", d1) == d1_version
    assert {d: store.committed_version("filtered_events", d) for d in DAYS} == kept
    assert all(store.is_committed(ds, d) for ds in ("training_events", "datagen_monitoring_report") for d in DAYS)
    assert _evaluations(instance, "training_events", "embedding_join_item_loss") == dict.fromkeys(DAYS, "SUCCEEDED")


def test_a_broken_middle_day_keeps_earlier_days_and_a_relaunch_completes_the_rest(instance, resources, store):
    d1, d2, d3 = DAYS
    events_file = next(Path(store.raw_partition_path("events", d2)).glob("*.parquet"))
    good = events_file.read_bytes()
    events_file.write_bytes(good[: len(good) // 2])  # a truncated upload

    selection = [AssetKey("filtered_events")]
    result = run_range("datagen_job", d1, d3, instance, resources, asset_selection=selection)
    assert not result.success
    assert store.is_committed("filtered_events", d1)
    assert not store.is_committed("filtered_events", d2) and not store.is_committed("filtered_events", d3)
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = str(failure.event_specific_data.error.message)
    assert f"filtered_events: {d2} failed" in message and f"Committed in this run: {d1}; not started: {d3}" in message
    assert str(events_file.name) in message  # the error names the bad file
    done = {e.event_specific_data.materialization.partition for e in result.all_events if e.is_step_materialization}
    assert done == {d1}  # the run records the day it did, and only that one

    events_file.write_bytes(good)
    version = store.committed_version("filtered_events", d1)
    assert run_range("datagen_job", d2, d3, instance, resources, asset_selection=selection).success
    assert store.committed_version("filtered_events", d1) == version
    assert all(store.is_committed("filtered_events", d) for d in DAYS)
