"""Partitioned checks on the datagen assets: production's error alerts, with thresholds from the datagen YAML.

Each check judges the committed partition's stats (written with the data, including the thresholds in force
when it was produced) and, for day-over-day deltas, previous partitions' metadata from the Dagster instance.
ERROR checks that mean bad data are blocking, so downstream assets don't materialize from it.
"""


from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    MetadataValue,
    asset_check,
)

from checks.expectations import items_suite, training_events_suite, validate
from recsys_assets.datagen.assets import (
    FILTERED_EVENTS,
    MONITORING_REPORT,
    TRAINING_EVENTS,
    datagen_monitoring_report,
    filtered_events,
    training_events,
)
from recsys_assets.datagen.metadata import md_table
from recsys_assets.partitions import daily_partitions, shift_day
from resources.spark import SparkResource
from resources.storage import StorageResource


def partition_metadata(instance: DagsterInstance, asset_key: AssetKey, day: str) -> dict | None:
    """Metadata values of the latest materialization of one partition, or None if it was never materialized."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, asset_partitions=[day]), limit=1
    ).records
    if not records:
        return None
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


@asset_check(
    asset=filtered_events,
    partitions_def=daily_partitions,
    blocking=True,
    description="Every filter's item loss % is at most its max_item_loss_pct in the datagen YAML.",
)
def filter_item_loss_within_limits(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    store = storage.store
    stats = store.read_json(store.committed_path(FILTERED_EVENTS, context.partition_key, "stats.json"))
    limits: dict = stats["max_item_loss_pct"]
    breaches = {n: stats[f"item_loss_percentage_{n}"] for n, lim in limits.items() if stats[f"item_loss_percentage_{n}"] > lim}
    return AssetCheckResult(
        passed=not breaches,
        severity=AssetCheckSeverity.ERROR,
        description=("item loss above limit: " + ", ".join(f"{n} {v}% > {limits[n]}%" for n, v in breaches.items()))
        if breaches
        else "all filters within item-loss limits",
        metadata={
            "breaches": md_table(["filter", "item loss %", "max %"], [[n, v, limits[n]] for n, v in breaches.items()]),
            "worst_filter_loss_pct": MetadataValue.float(
                max((stats[f"item_loss_percentage_{n}"] for n in limits), default=0.0)
            ),
        },
    )


@asset_check(
    asset=training_events,
    partitions_def=daily_partitions,
    blocking=True,
    description="Items lost for lack of a valid 128-d content embedding stay under the configured max.",
)
def embedding_join_item_loss(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    store = storage.store
    stats = store.read_json(store.committed_path(TRAINING_EVENTS, context.partition_key, "stats.json"))
    loss, limit = stats["item_loss_post_embedding_join"], stats["thresholds"]["max_item_loss_pct_embedding_join"]
    return AssetCheckResult(
        passed=loss <= limit,
        severity=AssetCheckSeverity.ERROR,
        description=f"embedding-join item loss {loss}% (max {limit}%)",
        metadata={
            "item_loss_post_embedding_join": MetadataValue.float(loss),
            "max_item_loss_pct": MetadataValue.float(limit),
            "num_embeddings_rejected": MetadataValue.int(stats["num_embeddings_rejected"]),
        },
    )


@asset_check(
    asset=training_events,
    partitions_def=daily_partitions,
    blocking=True,
    description="great-expectations: column types, non-null and unique ids, value ranges, 128-d finite embeddings.",
)
def training_events_expectations(
    context: AssetCheckExecutionContext, spark: SparkResource, storage: StorageResource
) -> AssetCheckResult:
    store = storage.store
    day = context.partition_key
    stats = store.read_json(store.committed_path(TRAINING_EVENTS, day, "stats.json"))
    session = spark.get_session()
    rows = validate(
        {
            "training_events": (
                session.read.parquet(store.committed_uri(TRAINING_EVENTS, day, "events")),
                lambda: training_events_suite(stats["max_item_age_days"]),
            ),
            "training_items": (session.read.parquet(store.committed_uri(TRAINING_EVENTS, day, "items")), items_suite),
        }
    )
    failed = [r for r in rows if not r["success"]]
    return AssetCheckResult(
        passed=not failed,
        severity=AssetCheckSeverity.ERROR,
        description=f"{len(rows) - len(failed)}/{len(rows)} expectations met"
        + (": failed " + ", ".join(f"{r['table']}.{r['expectation']}({r['column']})" for r in failed) if failed else ""),
        metadata={
            "expectations": md_table(
                ["table", "expectation", "column", "success", "unexpected / observed"],
                [[r["table"], r["expectation"], r["column"], r["success"], r["unexpected"]] for r in rows],
            ),
            "num_failed_expectations": MetadataValue.int(len(failed)),
        },
    )


def _delta_pct(now: float, before: float) -> float:
    return 100.0 * (now - before) / before if before else 0.0


@asset_check(
    asset=training_events,
    partitions_def=daily_partitions,
    description="Final events and items change by at most the configured % vs 1 and 7 days before "
    "(previous partitions' metadata from the instance).",
)
def events_items_delta_1d_7d(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    store = storage.store
    day = context.partition_key
    stats = store.read_json(store.committed_path(TRAINING_EVENTS, day, "stats.json"))
    th = stats["thresholds"]
    rows, breaches = [], []
    for label, offset, limit in (("1d", -1, th["max_abs_delta_pct_1d"]), ("7d", -7, th["max_abs_delta_pct_7d"])):
        base_day = shift_day(day, offset)
        prev = partition_metadata(context.instance, training_events.key, base_day)
        if prev is None:
            rows.append([label, base_day, "no baseline", "", "", limit])
            continue
        for metric, now_key in (("events", "num_final_rows"), ("items", "num_items_post_embed_join")):
            d = round(_delta_pct(stats[now_key], prev[now_key]), 2)
            rows.append([label, base_day, metric, prev[now_key], stats[now_key], f"{d:+}% (max ±{limit}%)"])
            if abs(d) > limit:
                breaches.append(f"{metric} {label} {d:+}%")
    return AssetCheckResult(
        passed=not breaches,
        severity=AssetCheckSeverity.WARN,
        description=("delta beyond threshold: " + ", ".join(breaches)) if breaches else "events/items deltas within thresholds",
        metadata={"deltas": md_table(["window", "baseline day", "metric", "before", "now", "delta"], rows)},
    )


def _report(storage: StorageResource, day: str) -> dict:
    store = storage.store
    return store.read_json(store.committed_path(MONITORING_REPORT, day, "report.json"))


@asset_check(
    asset=datagen_monitoring_report,
    partitions_def=daily_partitions,
    description="No item-age bucket's share of final items moves more than the configured points vs 7 days ago.",
)
def item_age_bucket_delta_7d(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    report = _report(storage, context.partition_key)
    limit = report["thresholds"]["max_age_bucket_share_delta_pp_7d"]
    deltas = report["item_age_bucket_share_delta_pp_7d"]
    if deltas is None:
        return AssetCheckResult(passed=True, description="no report 7 days before: nothing to compare",
                                metadata={"baseline_available": False})
    breaches = {k: v for k, v in deltas.items() if abs(v) > limit}
    return AssetCheckResult(
        passed=not breaches,
        severity=AssetCheckSeverity.WARN,
        description=("age buckets beyond ±%spp: " % limit + ", ".join(f"{k} {v:+}pp" for k, v in breaches.items()))
        if breaches
        else f"all age-bucket shares within ±{limit}pp of 7 days ago",
        metadata={
            "share_delta_pp_7d": md_table(["bucket", "share delta (pp)"], [[k, v] for k, v in deltas.items()]),
            "max_abs_share_delta_pp": MetadataValue.float(max(abs(v) for v in deltas.values())),
        },
    )


@asset_check(
    asset=datagen_monitoring_report,
    partitions_def=daily_partitions,
    description="At least the configured % of today's final items are new (absent from yesterday's).",
)
def new_items_1d(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    report = _report(storage, context.partition_key)
    limit = report["thresholds"]["min_new_items_pct_1d"]
    pct = report["new_items_pct_1d"]
    if pct is None:
        return AssetCheckResult(passed=True, description="no final items yesterday: nothing to compare",
                                metadata={"baseline_available": False})
    return AssetCheckResult(
        passed=pct >= limit,
        severity=AssetCheckSeverity.WARN,
        description=f"new items vs yesterday {pct}% (min {limit}%)",
        metadata={
            "new_items_pct_1d": MetadataValue.float(pct),
            "num_new_items_1d": MetadataValue.int(report["num_new_items_1d"]),
            "min_new_items_pct_1d": MetadataValue.float(limit),
        },
    )


datagen_checks = [
    filter_item_loss_within_limits,
    embedding_join_item_loss,
    training_events_expectations,
    events_items_delta_1d_7d,
    item_age_bucket_delta_7d,
    new_items_1d,
]
