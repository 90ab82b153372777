"""storage_retention: the daily clean-up of old partitions and abandoned staging data, with a dry-run mode."""

import datetime as dt

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from recsys_assets.core.metadata import md_table
from recsys_assets.maintenance.retention import RetentionPolicy, apply_retention, plan_retention
from resources.storage import StorageResource


class RetentionConfig(Config):
    max_partition_age_days: int = Field(default=30, ge=1, description="Derived partitions older than this are deleted.")
    staging_max_age_hours: float = Field(
        default=24.0,
        gt=0,
        description="Uncommitted versions, temp files and checkpoints untouched for this long are deleted.",
    )
    protect_latest_models: int = Field(
        default=2,
        ge=0,
        description="Latest committed model partitions whose "
        "training data, vocab and indexes are always kept (current + rollback).",
    )
    dry_run: bool = Field(default=False, description="Only report what would be deleted.")
    as_of: str = Field(default="", description="ISO timestamp to measure ages from; empty = now (UTC).")


@asset(
    group_name="maintenance",
    kinds={"python"},
    description="Deletes derived partitions older than the retention age, never-committed or superseded version "
    "directories, torn temp files and abandoned training checkpoints; keeps everything the latest models were "
    "trained on. Metadata lists what was (or, in dry-run, would be) deleted.",
)
def storage_retention(
    context: AssetExecutionContext, config: RetentionConfig, storage: StorageResource
) -> MaterializeResult:
    store = storage.store
    now = dt.datetime.fromisoformat(config.as_of) if config.as_of else dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    policy = RetentionPolicy(config.max_partition_age_days, config.staging_max_age_hours, config.protect_latest_models)
    plan = plan_retention(store, policy, now)
    deleted = 0 if config.dry_run else apply_retention(store, plan)
    context.log.info(
        "retention %s: %d paths, %.1f MB%s",
        "dry run" if config.dry_run else "applied",
        len(plan.actions),
        plan.total_bytes / 1e6,
        "" if config.dry_run else f" ({deleted} deleted)",
    )
    return MaterializeResult(
        metadata={
            "dry_run": config.dry_run,
            "num_paths": MetadataValue.int(len(plan.actions)),
            "num_deleted": MetadataValue.int(deleted),
            "bytes": MetadataValue.int(plan.total_bytes),
            "by_kind": md_table(
                ["kind", "paths", "bytes"], [[k, n, b] for k, (n, b) in sorted(plan.by_kind().items())]
            ),
            "paths": md_table(
                ["kind", "path", "bytes", "reason"], [[a.kind, a.path, a.bytes, a.reason] for a in plan.actions[:200]]
            ),
            "protected": md_table(
                ["dataset", "days kept for current models"],
                [[ds, ", ".join(days)] for ds, days in sorted(plan.protected.items())],
            ),
            "skipped_partitions": md_table(["problem"], [[x] for x in plan.problems]) if plan.problems else "none",
            "as_of": now.isoformat(),
        }
    )
