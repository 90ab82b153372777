"""user_history: each user's last positive events strictly before the day (recsys_assets/training/history.py),
built by a Spark stage (recsys_assets/datagen/user_history.py) from yesterday's history + yesterday's
training_events, or rebuilt from the lookback window when yesterday's history is missing or was built from data
that has changed since (a day recommitted or withheld after it). Staged until its point-in-time check passes.
"""

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    MaterializeResult,
    MetadataValue,
    TimeWindowPartitionMapping,
    asset,
    define_asset_job,
)

from recsys_assets.core.automation import after_upstream
from recsys_assets.core.datasets import DATASETS, TRAINING_EVENTS, USER_HISTORY
from recsys_assets.core.metadata import md_table, numeric_metadata
from recsys_assets.core.partitions import PER_DAY, daily_partitions, shift_day
from recsys_assets.datagen.assets import training_events
from recsys_assets.datagen.stages import stage_job
from recsys_assets.training.config import TrainingSpec, load_training_spec
from resources.config_files import ConfigFilesResource
from resources.spark import SparkResource
from resources.storage import DatasetStore, StorageResource

_YESTERDAY = TimeWindowPartitionMapping(start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True)


def history_definition(spec: TrainingSpec) -> dict:
    """What a history's rows depend on besides its inputs: a history built under another definition is not extended."""
    return {
        "keep": spec.history.keep,
        "lookback_days": spec.history.lookback_days,
        "positive_rule": spec.labels.model_dump(
            include={"retrieval_positive_min_watch_ratio", "retrieval_positive_on_engagement"}
        ),
    }


def history_sources(store: DatasetStore, day: str, spec: TrainingSpec) -> dict:
    """What user_history `day` is built from: the committed training_events versions of the lookback days, and
    whether yesterday's history can be extended (it exists, was built under the same definition, every day it read
    still has the version it read, and no day it lacked has been committed since) or the lookback must be read in
    full."""
    lookback = spec.history.lookback_days
    days = [shift_day(day, -k) for k in range(lookback, 0, -1)]
    committed = {d: (store.read_manifest(TRAINING_EVENTS, d) or {}).get("version") for d in days}
    committed = {d: v for d, v in committed.items() if v}
    yesterday = shift_day(day, -1)
    previous = store.read_manifest(USER_HISTORY, yesterday)
    same_definition = previous is not None and all(previous.get(k) == v for k, v in history_definition(spec).items())
    if same_definition:
        sources = previous.get("sources") or {}
        # days both histories cover: [day - lookback, yesterday - 1]
        shared = {d for d in days if d < yesterday}
        if {d: v for d, v in sources.items() if d in shared} == {d: v for d, v in committed.items() if d in shared}:
            new = {yesterday: committed[yesterday]} if yesterday in committed else {}
            return {
                "previous_day": yesterday,
                "previous_version": previous["version"],
                "event_versions": new,
                "sources": committed,
            }
    return {"previous_day": yesterday, "previous_version": None, "event_versions": committed, "sources": committed}


@asset(
    partitions_def=daily_partitions,
    # Built when the previous day's training_events is updated and none of its blocking checks failed (they are
    # judged inside the datagen run): ready before day D's data. `not_failed`, not `passed`: the self-dependency on
    # yesterday's history may be missing (the stage then rebuilds from the lookback).
    automation_condition=after_upstream(AssetSelection.assets("training_events"), gate="not_failed"),
    group_name="history",
    deps=[
        AssetDep(training_events, partition_mapping=_YESTERDAY),
        AssetDep(AssetKey(USER_HISTORY), partition_mapping=_YESTERDAY),
    ],
    kinds={"spark", "parquet"},
    backfill_policy=PER_DAY,
    description="Per user, the last history.keep positive events strictly before the day (item, time, which "
    "positive, watch ratio), newest first, within history.lookback_days: yesterday's history + yesterday's "
    "training_events (withheld days are never read), or a full rebuild of the lookback. Point-in-time checked.",
)
def user_history(
    context: AssetExecutionContext, spark: SparkResource, storage: StorageResource, config_files: ConfigFilesResource
) -> MaterializeResult:
    from recsys_assets.core.store_dirs import PartitionVersion

    day, store = context.partition_key, storage.store
    spec = load_training_spec(config_files.training)
    inputs = history_sources(store, day, spec)
    out = PartitionVersion.new(store, USER_HISTORY, day, context.run_id)
    params = {
        "user_history": {
            "previous_day": inputs["previous_day"],
            "previous_version": inputs["previous_version"],
            "event_versions": inputs["event_versions"],
            "keep": spec.history.keep,
            "lookback_days": spec.history.lookback_days,
            "min_watch_ratio": spec.labels.retrieval_positive_min_watch_ratio,
            "on_engagement": spec.labels.retrieval_positive_on_engagement,
        }
    }
    stats = spark.run_job(context, stage_job(USER_HISTORY, store, day, out.version, None, params))
    out.publish(
        row_count=stats["users_with_history"],
        sources=inputs["sources"],
        coverage=stats.get("coverage"),
        **history_definition(spec),
    )
    context.log.info(
        f"user_history {day}: {stats['mode']} ({'from ' + inputs['previous_day'] if inputs['previous_version'] else ''}"
        f" + {sorted(inputs['event_versions'])}), {stats['users_with_history']:,} users"
    )
    coverage = stats.get("coverage")
    return MaterializeResult(
        metadata={
            "dagster/row_count": MetadataValue.int(stats["users_with_history"]),
            "mode": stats["mode"],
            "built_from": md_table(
                ["input", "day", "version"],
                (
                    [["user_history", inputs["previous_day"], inputs["previous_version"]]]
                    if inputs["previous_version"]
                    else []
                )
                + [["training_events", d, v] for d, v in sorted(inputs["event_versions"].items())],
            ),
            "history_length": md_table(
                ["users", "entries", "mean", "p50", "p90", "p99", "keep"],
                [
                    [
                        stats["users_with_history"],
                        stats["entries"],
                        round(stats["mean_length"], 2),
                        stats["length_p50"],
                        stats["length_p90"],
                        stats["length_p99"],
                        spec.history.keep,
                    ]
                ],
            ),
            "newest_entry": str(stats["newest_entry"]),
            "gate": "staged: committed only when " + ", ".join(DATASETS[USER_HISTORY].blocking_checks) + " pass",
            "version": out.version,
            **numeric_metadata(
                {
                    "users_with_history": stats["users_with_history"],
                    "mean_length": float(stats["mean_length"]),
                    **({"active_users_coverage": float(coverage)} if coverage is not None else {}),
                }
            ),
        }
    )


user_history_job = define_asset_job(
    "user_history_job",
    selection=AssetSelection.assets(USER_HISTORY),
    partitions_def=daily_partitions,
    description="Build user_history for a day (backfills run the days in order: each extends the day before).",
)

history_assets = [user_history]
