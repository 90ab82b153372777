"""Datagen assets: raw events -> filtered_events -> training_events -> datagen_monitoring_report.

Each asset is a thin wrapper: resolve resources, the run's days and config, and for each day hand the Spark stage
to the Spark resource (or call the pure functions), publish the written version (recsys_assets/core/store_dirs.py)
and report rich metadata. A run may cover a range of days (a backfill): recsys_assets/datagen/ranges.py processes
them in date order in one Spark session, judging each day with the asset's checks (day_checks.py) before the next.
"""

import datetime as dt

from dagster import AssetExecutionContext, AssetSpec, MetadataValue, multi_asset

from recsys_assets.config.datagen import QUARANTINE_REASONS
from recsys_assets.config.files import ConfigFilesResource
from recsys_assets.core.automation import after_upstream
from recsys_assets.core.datasets import DATASETS, FILTERED_EVENTS, MONITORING_REPORT, TRAINING_EVENTS
from recsys_assets.core.days import shift_day
from recsys_assets.core.metadata import column_schema, md_table, numeric_metadata
from recsys_assets.core.partitions import DATAGEN_BACKFILL, daily_partitions
from recsys_assets.core.readers import read_final_items
from recsys_assets.core.runs import DayRun
from recsys_assets.core.spark_stages import write_with_stage
from recsys_assets.datagen.day_checks import check_specs
from recsys_assets.datagen.monitoring import build_report
from recsys_assets.datagen.quarantine import judge_input_losses
from recsys_assets.datagen.ranges import DayWritten, run_days
from recsys_assets.datagen.raw_sources import raw_asset_key
from recsys_assets.datagen.stages import datagen_params
from resources.spark import SparkResource
from resources.storage import StorageResource


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _gate_metadata(dataset: str) -> dict:
    checks = DATASETS[dataset].blocking_checks
    return {
        "gate": "staged: committed (readable downstream) only when " + ", ".join(checks) + " pass"
        if checks
        else "committed"
    }


# Started by Declarative Automation when the success-file sensor reports a day's raw partitions (or upstream
# re-delivers them): the day's three assets are requested in one tick and run in one run (their checks are judged
# inside it, hence the `not_failed` gate: no upstream blocking check failed); a range of days reported at once is
# launched as a backfill, in range runs of up to RECSYS_DATAGEN_DAYS_PER_RUN days.
DATAGEN_AFTER_RAW = after_upstream(None, all_deps_present=True, gate="not_failed")


def _datagen_asset(name: str, deps: list, kinds: set[str], description: str):
    """A datagen asset: daily partitioned, range runs per DATAGEN_BACKFILL, its day checks declared with it."""
    return multi_asset(
        specs=[
            AssetSpec(
                name,
                deps=deps,
                group_name="datagen",
                kinds=kinds,
                description=description,
                partitions_def=daily_partitions,
                automation_condition=DATAGEN_AFTER_RAW,
            )
        ],
        name=name,
        partitions_def=daily_partitions,
        backfill_policy=DATAGEN_BACKFILL,
        check_specs=check_specs(name),
        can_subset=True,  # the check outputs are reported per day (ranges.py), not as one output per run
    )


@_datagen_asset(
    FILTERED_EVENTS,
    deps=[raw_asset_key("events"), raw_asset_key("items")],
    kinds={"spark", "parquet"},
    description="Events after quarantine, language filter, seeded sample and the ordered filter chain of the "
    "datagen YAML, with events/items counts and item loss per stage. Writes events/ (event columns), items/ "
    "(one row per surviving item: catalogue columns, event count, max age) and quarantine/.",
)
def filtered_events(
    context: AssetExecutionContext, spark: SparkResource, storage: StorageResource, config_files: ConfigFilesResource
):
    spec = config_files.datagen_spec()
    yield from run_days(context, FILTERED_EVENTS, storage, lambda run: _filtered_events_day(run, context, spark, spec))


def _filtered_events_day(run: DayRun, context, spark: SparkResource, spec) -> DayWritten:
    out, stats = write_with_stage(run, spark, context, FILTERED_EVENTS, datagen_params(spec))
    day = run.day
    input_rows, _ = judge_input_losses(stats, stats["input_limits"])

    limits = {f.name: f.max_item_loss_pct for f in spec.filters}
    stage_rows = [
        [
            name,
            stats[f"num_events_post_filter_{name}"],
            stats[f"num_items_post_filter_{name}"],
            stats[f"item_loss_percentage_{name}"],
            limits.get(name, "-"),
        ]
        for name in stats["stage_order"]
    ]
    context.log.info(
        "filtered_events %s: %d raw -> %d events, %d items, %d quarantined",
        day,
        stats["num_raw_events"],
        stats["num_events_post_filters"],
        stats["num_unique_items_post_filters"],
        stats["num_quarantined_events"],
    )
    return DayWritten(
        out.version,
        stats,
        {
            "dagster/row_count": MetadataValue.int(stats["num_events_post_filters"]),
            "dagster/column_schema": column_schema(stats["schema"]),
            "items_column_schema": column_schema(stats["items_schema"]),
            "filter_chain": md_table(
                ["stage", "events after", "items after", "item loss %", "max item loss %"],
                [["raw", stats["num_raw_events"], stats["num_raw_items"], "", ""], *stage_rows],
            ),
            "quarantine": md_table(
                ["reason", "events"], [[r, stats[f"num_quarantined_{r}"]] for r in QUARANTINE_REASONS]
            ),
            "input_losses": md_table(
                ["stage", "what", "events", "of", "% (sample: pp off)", "limit", "result"], input_rows
            ),
            "path": MetadataValue.path(out.uri),
            "version": out.version,
            **_gate_metadata(FILTERED_EVENTS),
            **numeric_metadata(stats),
        },
    )


@_datagen_asset(
    TRAINING_EVENTS,
    deps=[filtered_events, raw_asset_key("item_embeddings"), raw_asset_key("users")],
    kinds={"spark", "parquet"},
    description="Training rows: filtered events on items with a valid 128-d content embedding, with the latest "
    "user features, nulls filled and float features normalised; plus the final items table (catalogue columns, "
    "item-level normalised features, embedding), stored once per item rather than on every event.",
)
def training_events(
    context: AssetExecutionContext,
    spark: SparkResource,
    storage: StorageResource,
    config_files: ConfigFilesResource,
):
    spec = config_files.datagen_spec()
    yield from run_days(
        context, TRAINING_EVENTS, storage, lambda run: _training_events_day(run, context, spark, spec), spark=spark
    )


def _training_events_day(run: DayRun, context, spark: SparkResource, spec) -> DayWritten:
    filter_stats = run.store.read_json(run.store.committed_path(FILTERED_EVENTS, run.day, "stats.json"))
    out, stats = write_with_stage(run, spark, context, TRAINING_EVENTS, datagen_params(spec))
    normalization = stats["normalization"]
    return DayWritten(
        out.version,
        stats,
        {
            "dagster/row_count": MetadataValue.int(stats["num_final_rows"]),
            "dagster/column_schema": column_schema(stats["schema"]),
            "items_column_schema": column_schema(stats["items_schema"]),
            "embedding_join": md_table(
                ["items before", "items after", "item loss %", "events after", "embeddings rejected"],
                [
                    [
                        filter_stats["num_unique_items_post_filters"],
                        stats["num_items_post_embed_join"],
                        stats["item_loss_post_embedding_join"],
                        stats["num_events_post_embedding_join"],
                        stats["num_embeddings_rejected"],
                    ]
                ],
            ),
            "normalization": md_table(
                ["column", "transform", "mean", "std"],
                [[c, m["transform"], round(m["mean"], 5), round(m["std"], 5)] for c, m in normalization.items()],
            ),
            "path": MetadataValue.path(out.uri),
            "version": out.version,
            **_gate_metadata(TRAINING_EVENTS),
            **numeric_metadata(stats),
        },
    )


def read_committed_report(store, day: str) -> dict | None:
    if not store.is_committed(MONITORING_REPORT, day):
        return None
    return store.read_json(store.committed_path(MONITORING_REPORT, day, "report.json"))


@_datagen_asset(
    MONITORING_REPORT,
    deps=[training_events],
    kinds={"python", "json"},
    description="Production's daily monitoring dict: filter-stage losses, embedding-join loss, item-age buckets "
    "with 7-day deltas, new/common items vs yesterday, item diffs 1d/7d, run time. JSON next to the data.",
)
def datagen_monitoring_report(
    context: AssetExecutionContext, storage: StorageResource, config_files: ConfigFilesResource
):
    spec = config_files.datagen_spec()
    yield from run_days(context, MONITORING_REPORT, storage, lambda run: _monitoring_report_day(run, spec))


def _monitoring_report_day(run: DayRun, spec) -> DayWritten:
    store, day = run.store, run.day
    filter_stats = store.read_json(store.committed_path(FILTERED_EVENTS, day, "stats.json"))
    join_stats = store.read_json(store.committed_path(TRAINING_EVENTS, day, "stats.json"))
    items = read_final_items(store, day, ["item_id", "item_age_days"])
    prev_day, week_ago = shift_day(day, -1), shift_day(day, -7)
    prev_items = None
    if store.is_committed(TRAINING_EVENTS, prev_day):
        prev_items = read_final_items(store, prev_day, ["item_id"]).column("item_id").to_numpy(zero_copy_only=False)
    started = filter_stats["started_at"]
    finished = _now()
    run_time_s = (dt.datetime.fromisoformat(finished) - dt.datetime.fromisoformat(started)).total_seconds()
    report = build_report(
        day=day,
        filter_stats={k: v for k, v in filter_stats.items() if k.startswith(("num_", "item_loss"))},
        join_stats={k: v for k, v in join_stats.items() if k.startswith(("num_", "item_loss"))},
        item_ids=items.column("item_id").to_numpy(zero_copy_only=False),
        item_age_days=items.column("item_age_days").to_numpy(zero_copy_only=False),
        edges=spec.item_age_bucket_edges,
        prev_1d_item_ids=prev_items,
        prev_1d_report=read_committed_report(store, prev_day),
        prev_7d_report=read_committed_report(store, week_ago),
        started_at=started,
        finished_at=finished,
        run_time_s=run_time_s,
    )
    report["thresholds"] = spec.thresholds.model_dump()
    out = run.write(MONITORING_REPORT, lambda out: out.write_json("report.json", report))

    buckets = report["item_age_buckets"]
    share_delta = report["item_age_bucket_share_delta_pp_7d"] or {}
    return DayWritten(
        out.version,
        report,
        {
            "item_age_buckets": md_table(
                ["bucket (days)", "items", "7d delta", "share delta 7d (pp)"],
                [
                    [
                        k,
                        report["item_age_bucket_formated"][k],
                        (report["item_age_buckets_delta_7d"] or {}).get(k, "n/a"),
                        share_delta.get(k, "n/a"),
                    ]
                    for k in buckets
                ],
            ),
            "index_deltas": md_table(
                ["new items 1d", "common items 1d", "item diff 1d", "item diff 7d"],
                [
                    [
                        report["new_items_in_index_1d_delta"] or "n/a",
                        report["common_items_in_index_1d_delta"] or "n/a",
                        report["item_diff_1d_delta"] or "n/a",
                        report["item_diff_7d_delta"] or "n/a",
                    ]
                ],
            ),
            "monitoring_dict": MetadataValue.json(report),
            "report_path": MetadataValue.path(store.version_uri(MONITORING_REPORT, day, out.version, "report.json")),
            **numeric_metadata(
                {
                    k: report[k]
                    for k in (
                        "num_final_rows",
                        "num_items_post_embed_join",
                        "new_items_pct_1d",
                        "num_new_items_1d",
                        "item_delta_pct_1d",
                        "item_delta_pct_7d",
                        "event_delta_pct_1d",
                        "event_delta_pct_7d",
                        "datagen_run_time_s",
                    )
                }
            ),
        },
    )


datagen_assets = [filtered_events, training_events, datagen_monitoring_report]
