"""The user_history asset and its job: each user's last positive events strictly before the day, built by the Spark
stage (recsys_assets/history/stage.py) from yesterday's history + yesterday's training_events, or rebuilt from the
lookback when yesterday's history is missing or was built from data that has changed since (sources.py). Staged
until its point-in-time check passes (checks.py)."""

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

from recsys_assets.config.files import ConfigFilesResource
from recsys_assets.config.training import TrainingSpec
from recsys_assets.core.automation import after_upstream
from recsys_assets.core.datasets import DATASETS, TRAINING_EVENTS, USER_HISTORY
from recsys_assets.core.metadata import md_table, numeric_metadata
from recsys_assets.core.partitions import PER_DAY, daily_partitions
from recsys_assets.core.runs import DayRun
from recsys_assets.core.spark_stages import write_with_stage
from recsys_assets.history.sources import HistorySources, history_definition, history_sources
from resources.spark import SparkResource
from resources.storage import StorageResource

GROUP = "history"
_YESTERDAY = TimeWindowPartitionMapping(start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True)


@asset(
    partitions_def=daily_partitions,
    # Built when the previous day's training_events is updated and none of its blocking checks failed (they are
    # judged inside the datagen run): ready before day D's data. And when yesterday's history is rebuilt: a rewritten
    # or un-withheld day rebuilds the next day's history, which rebuilds the one after, in order, so no later history
    # keeps what the day no longer says (a stale one is never trained on: ml/windows.py stale_history). `not_failed`,
    # not `passed`: the self-dependency on yesterday's history may be missing (the stage then rebuilds in full).
    automation_condition=after_upstream(AssetSelection.assets(TRAINING_EVENTS, USER_HISTORY), gate="not_failed"),
    group_name=GROUP,
    deps=[
        AssetDep(AssetKey(TRAINING_EVENTS), partition_mapping=_YESTERDAY),
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
    run, spec = DayRun.of(context, storage), config_files.training_spec()
    sources = history_sources(run.store, run.day, spec)
    out, stats = write_with_stage(
        run,
        spark,
        context,
        USER_HISTORY,
        sources.stage_params(spec),
        sources=sources.sources,
        **history_definition(spec),
    )
    base = f"from {sources.previous_day} " if sources.previous_version else ""
    run.log(
        f"user_history {run.day}: {stats['mode']} ({base}+ {sorted(sources.event_versions)}), "
        f"{stats['users_with_history']:,} users"
    )
    return MaterializeResult(metadata=history_metadata(stats, sources, spec, out.version))


def history_metadata(stats: dict, sources: HistorySources, spec: TrainingSpec, version: str) -> dict:
    coverage = stats.get("coverage")
    previous = [["user_history", sources.previous_day, sources.previous_version]] if sources.previous_version else []
    length_columns = ["users_with_history", "entries", "mean_length", "length_p50", "length_p90", "length_p99"]
    return {
        "dagster/row_count": MetadataValue.int(stats["users_with_history"]),
        "mode": stats["mode"],
        "built_from": md_table(
            ["input", "day", "version"],
            previous + [["training_events", d, v] for d, v in sorted(sources.event_versions.items())],
        ),
        "history_length": md_table(
            ["users", "entries", "mean", "p50", "p90", "p99", "keep"],
            [[round(stats[c], 2) if c == "mean_length" else stats[c] for c in length_columns] + [spec.history.keep]],
        ),
        "newest_entry": str(stats["newest_entry"]),
        "gate": "staged: committed only when " + ", ".join(DATASETS[USER_HISTORY].blocking_checks) + " pass",
        "version": version,
        **numeric_metadata(
            {
                "users_with_history": stats["users_with_history"],
                "mean_length": float(stats["mean_length"]),
                **({"active_users_coverage": float(coverage)} if coverage is not None else {}),
            }
        ),
    }


user_history_job = define_asset_job(
    "user_history_job",
    selection=AssetSelection.assets(USER_HISTORY),
    partitions_def=daily_partitions,
    description="Build user_history for a day (backfills run the days in order: each extends the day before).",
)
