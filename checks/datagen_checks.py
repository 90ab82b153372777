"""Partitioned checks on the datagen assets: production's error alerts, with thresholds from the datagen YAML.

Each check judges the stats written with the partition's version under check (including the thresholds in force
when it was produced); day-over-day deltas compare with the committed stats of earlier days, so a day withheld by a
failed blocking check is never anyone's baseline. ERROR checks that mean bad data are blocking: they gate the
version's commit (checks/gating.py), so no downstream asset in any run reads a day that failed them.
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)

from checks.expectations import items_suite, training_events_suite, validate
from checks.gating import gate, judged_version
from recsys_assets.core.datasets import FILTERED_EVENTS, MONITORING_REPORT, TRAINING_EVENTS
from recsys_assets.core.metadata import md_table
from recsys_assets.core.partitions import daily_partitions, shift_day
from recsys_assets.datagen.assets import datagen_monitoring_report, filtered_events, training_events
from recsys_assets.datagen.quarantine import judge_input_losses
from resources.spark import SparkResource
from resources.storage import DatasetStore, StorageResource


def _stats(store: DatasetStore, dataset: str, day: str) -> tuple[str, dict]:
    version = judged_version(store, dataset, day)
    return version, store.read_json(store.version_path(dataset, day, version, "stats.json"))


@asset_check(
    asset=filtered_events,
    partitions_def=daily_partitions,
    blocking=True,
    description="Every filter's item loss % is at most its max_item_loss_pct in the datagen YAML.",
)
def filter_item_loss_within_limits(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    store, day = storage.store, context.partition_key
    version, stats = _stats(store, FILTERED_EVENTS, day)
    limits: dict = stats["max_item_loss_pct"]
    breaches = {
        n: stats[f"item_loss_percentage_{n}"] for n, lim in limits.items() if stats[f"item_loss_percentage_{n}"] > lim
    }
    return gate(
        store,
        FILTERED_EVENTS,
        day,
        version,
        "filter_item_loss_within_limits",
        AssetCheckResult(
            passed=not breaches,
            severity=AssetCheckSeverity.ERROR,
            description=("item loss above limit: " + ", ".join(f"{n} {v}% > {limits[n]}%" for n, v in breaches.items()))
            if breaches
            else "all filters within item-loss limits",
            metadata={
                "breaches": md_table(
                    ["filter", "item loss %", "max %"], [[n, v, limits[n]] for n, v in breaches.items()]
                ),
                "worst_filter_loss_pct": MetadataValue.float(
                    max((stats[f"item_loss_percentage_{n}"] for n in limits), default=0.0)
                ),
            },
        ),
    )


@asset_check(
    asset=filtered_events,
    partitions_def=daily_partitions,
    blocking=True,
    description="Losses before the filter chain stay within the datagen YAML's limits: quarantined events in total "
    "and per reason, the language stage's event and item loss, and the sample's kept share vs its fraction. Judged "
    "the same on a deployment's first day (absolute limits, no previous day needed).",
)
def input_losses_within_limits(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    store, day = storage.store, context.partition_key
    version, stats = _stats(store, FILTERED_EVENTS, day)
    rows, breaches = judge_input_losses(stats, stats["input_limits"])
    return gate(
        store,
        FILTERED_EVENTS,
        day,
        version,
        "input_losses_within_limits",
        AssetCheckResult(
            passed=not breaches,
            severity=AssetCheckSeverity.ERROR,
            description="; ".join(breaches) or "quarantine, language and sample within limits",
            metadata={
                "input_losses": md_table(
                    ["stage", "what", "events", "of", "% (sample: pp off)", "limit", "result"], rows
                ),
                "num_raw_events": MetadataValue.int(stats["num_raw_events"]),
                "num_quarantined_events": MetadataValue.int(stats["num_quarantined_events"]),
                "num_breaches": MetadataValue.int(len(breaches)),
            },
        ),
    )


@asset_check(
    asset=training_events,
    partitions_def=daily_partitions,
    blocking=True,
    description="Items lost for lack of a valid 128-d content embedding stay under the configured max.",
)
def embedding_join_item_loss(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    store, day = storage.store, context.partition_key
    version, stats = _stats(store, TRAINING_EVENTS, day)
    loss, limit = stats["item_loss_post_embedding_join"], stats["thresholds"]["max_item_loss_pct_embedding_join"]
    return gate(
        store,
        TRAINING_EVENTS,
        day,
        version,
        "embedding_join_item_loss",
        AssetCheckResult(
            passed=loss <= limit,
            severity=AssetCheckSeverity.ERROR,
            description=f"embedding-join item loss {loss}% (max {limit}%)",
            metadata={
                "item_loss_post_embedding_join": MetadataValue.float(loss),
                "max_item_loss_pct": MetadataValue.float(limit),
                "num_embeddings_rejected": MetadataValue.int(stats["num_embeddings_rejected"]),
            },
        ),
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
    store, day = storage.store, context.partition_key
    version, stats = _stats(store, TRAINING_EVENTS, day)
    session = spark.get_session()
    events = session.read.parquet(store.version_uri(TRAINING_EVENTS, day, version, "events"))
    items = session.read.parquet(store.version_uri(TRAINING_EVENTS, day, version, "items"))
    rows = validate(
        {
            "training_events": (events, lambda: training_events_suite(stats["max_item_age_days"], events.columns)),
            "training_items": (items, lambda: items_suite(items.columns)),
        }
    )
    failed = [r for r in rows if not r["success"]]
    return gate(
        store,
        TRAINING_EVENTS,
        day,
        version,
        "training_events_expectations",
        AssetCheckResult(
            passed=not failed,
            severity=AssetCheckSeverity.ERROR,
            description=f"{len(rows) - len(failed)}/{len(rows)} expectations met"
            + (
                ": failed " + ", ".join(f"{r['table']}.{r['expectation']}({r['column']})" for r in failed)
                if failed
                else ""
            ),
            metadata={
                "expectations": md_table(
                    ["table", "expectation", "column", "success", "unexpected / observed"],
                    [[r["table"], r["expectation"], r["column"], r["success"], r["unexpected"]] for r in rows],
                ),
                "num_failed_expectations": MetadataValue.int(len(failed)),
            },
        ),
    )


def _delta_pct(now: float, before: float) -> float:
    return 100.0 * (now - before) / before if before else 0.0


@asset_check(
    asset=training_events,
    partitions_def=daily_partitions,
    description="Final events and items change by at most the configured % vs 1 and 7 days before (the committed "
    "versions of those days: a day withheld by a failed blocking check is no baseline).",
)
def events_items_delta_1d_7d(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    store, day = storage.store, context.partition_key
    _, stats = _stats(store, TRAINING_EVENTS, day)
    th = stats["thresholds"]
    rows, breaches = [], []
    for label, offset, limit in (("1d", -1, th["max_abs_delta_pct_1d"]), ("7d", -7, th["max_abs_delta_pct_7d"])):
        base_day = shift_day(day, offset)
        if not store.is_committed(TRAINING_EVENTS, base_day):
            rows.append([label, base_day, "no baseline (no committed version)", "", "", limit])
            continue
        prev = store.read_json(store.committed_path(TRAINING_EVENTS, base_day, "stats.json"))
        for metric, now_key in (("events", "num_final_rows"), ("items", "num_items_post_embed_join")):
            d = round(_delta_pct(stats[now_key], prev[now_key]), 2)
            rows.append([label, base_day, metric, prev[now_key], stats[now_key], f"{d:+}% (max ±{limit}%)"])
            if abs(d) > limit:
                breaches.append(f"{metric} {label} {d:+}%")
    return AssetCheckResult(
        passed=not breaches,
        severity=AssetCheckSeverity.WARN,
        description=("delta beyond threshold: " + ", ".join(breaches))
        if breaches
        else "events/items deltas within thresholds",
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
        return AssetCheckResult(
            passed=True,
            description="no report 7 days before: nothing to compare",
            metadata={"baseline_available": False},
        )
    breaches = {k: v for k, v in deltas.items() if abs(v) > limit}
    return AssetCheckResult(
        passed=not breaches,
        severity=AssetCheckSeverity.WARN,
        description=(f"age buckets beyond ±{limit}pp: " + ", ".join(f"{k} {v:+}pp" for k, v in breaches.items()))
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
        return AssetCheckResult(
            passed=True,
            description="no final items yesterday: nothing to compare",
            metadata={"baseline_available": False},
        )
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
    input_losses_within_limits,
    embedding_join_item_loss,
    training_events_expectations,
    events_items_delta_1d_7d,
    item_age_bucket_delta_7d,
    new_items_1d,
]
