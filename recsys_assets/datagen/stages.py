"""The datagen Spark stages (filtered_events, training_events) as plain functions of (SparkSession, store, day,
version, params): read, transform, write the version directory and its stats.json, return the stats. Nothing here
commits, and nothing imports Dagster.

The same functions run in-process (local Spark or a standalone master), in a spark-submit'ed process, or as a
Dataproc PySpark job (recsys_assets/core/spark_stages.py names them, core/spark_job.py runs them): the asset
publishes the version afterwards from the stats the job handed back, so every backend produces byte-for-byte the
same partition layout.
"""

from __future__ import annotations

import datetime as dt
import time
from contextlib import contextmanager

from recsys_assets.config.datagen import DatagenSpec, parse_datagen_spec
from recsys_assets.core.datasets import FILTERED_EVENTS, TRAINING_EVENTS
from recsys_assets.core.days import window_micros, window_of
from recsys_assets.core.raw_inputs import latest_raw_day, read_raw
from resources.store import DatasetStore

# The Spark transformations (filter_chain, training_events) are imported inside the stage functions: importing this
# module needs no pyspark.


# ~32 MiB row groups of training_events: ~0.3-0.5M rows at the design documents' row width (Spark's default, 128 MiB,
# would be ~1.5M rows a piece: four pieces in flight per loader hold ~1 GB decoded).
TRAINING_ROW_GROUP_BYTES = 32 * 1024 * 1024
# Compressed Parquet bytes a row of each day-sized output takes (measured on the synthetic 800k-event day: 12.3 MB
# for 345,703 filtered events, 23.3 MB for 344,461 training events): how many rows make a file of the session's
# target size (SparkResource.target_file_mb).
BYTES_PER_ROW = {FILTERED_EVENTS: 36, TRAINING_EVENTS: 68}


def sized_write(session, df, table: str, expected_rows: int | None = None):
    """`df.write` with files aimed at the session's target size: at most target / BYTES_PER_ROW rows per file
    (splits large partitions), and, when the row count is known beforehand, the partitions coalesced (no shuffle)
    to about rows x bytes / target when there are more of them (merges small ones)."""
    from resources.spark_conf import DEFAULT_TARGET_FILE_MB, TARGET_FILE_BYTES_CONF

    target = int(session.conf.get(TARGET_FILE_BYTES_CONF, str(DEFAULT_TARGET_FILE_MB << 20)))
    rows_per_file = max(10_000, target // BYTES_PER_ROW[table])
    if expected_rows is not None:
        files = max(1, -(-expected_rows // rows_per_file))
        if df.rdd.getNumPartitions() > files:
            df = df.coalesce(files)
    return df.write.option("maxRecordsPerFile", rows_per_file)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _schema(df) -> list[list[str]]:
    return [[f.name, f.dataType.simpleString()] for f in df.schema.fields]


@contextmanager
def _job_description(session, text: str):
    """Name the Spark jobs of the enclosed actions (Spark UI, Dataproc job page, `benchmarks/datagen.py --profile`):
    a write or count called through py4j is otherwise named 'parquet at NativeMethodAccessorImpl.java:0'. The
    caller's own description (a Dagster op or a submitted job may set one) is restored afterwards."""
    sc = session.sparkContext
    before = sc.getLocalProperty("spark.job.description")
    sc.setJobDescription(text)
    try:
        yield
    finally:
        sc.setJobDescription(before)


def job_spec(params: dict) -> DatagenSpec:
    """The datagen spec a stage runs with: its validated content travels in the job's params (a submitted job needs
    no access to the YAML file)."""
    return parse_datagen_spec(params["datagen_spec"], "job parameters")


def datagen_params(spec: DatagenSpec) -> dict:
    return {"datagen_spec": spec.model_dump(mode="json")}


def filtered_events_stage(session, store: DatasetStore, day: str, version: str, params: dict) -> dict:
    from recsys_assets.datagen.filter_chain import run_filter_chain

    started_at, t0 = _now(), time.monotonic()
    spec = job_spec(params)
    start_us, end_us = window_micros(window_of(day))
    result = run_filter_chain(
        read_raw(session, store, "events", day), read_raw(session, store, "items", day), spec, start_us, end_us
    )
    try:
        with _job_description(session, f"{FILTERED_EVENTS} {day}: write events"):
            sized_write(session, result.filtered_events, FILTERED_EVENTS).mode("overwrite").parquet(
                store.version_uri(FILTERED_EVENTS, day, version, "events")
            )
        with _job_description(session, f"{FILTERED_EVENTS} {day}: write items"):
            result.filtered_items.write.mode("overwrite").parquet(
                store.version_uri(FILTERED_EVENTS, day, version, "items")
            )
        with _job_description(session, f"{FILTERED_EVENTS} {day}: write quarantine"):
            result.quarantined_events.write.mode("overwrite").parquet(
                store.version_uri(FILTERED_EVENTS, day, version, "quarantine")
            )
        schema, items_schema = _schema(result.filtered_events), _schema(result.filtered_items)
    finally:
        result.release()
    stats = {
        **result.stats,
        "max_item_loss_pct": {f.name: f.max_item_loss_pct for f in spec.filters},
        "input_limits": spec.input_limits(),
        "schema": schema,
        "items_schema": items_schema,
        "started_at": started_at,
        "finished_at": _now(),
        "run_time_s": round(time.monotonic() - t0, 2),
    }
    store.write_json_atomic(store.version_path(FILTERED_EVENTS, day, version, "stats.json"), stats)
    return stats


def training_events_stage(session, store: DatasetStore, day: str, version: str, params: dict) -> dict:
    from recsys_assets.datagen.training_events import build_training_events, count_users

    t0 = time.monotonic()
    filter_stats = store.read_json(store.committed_path(FILTERED_EVENTS, day, "stats.json"))
    spec = job_spec(params)
    users_day = latest_raw_day(store, "users", day)
    filtered_items_path = store.committed_path(FILTERED_EVENTS, day, "items")
    if not store.exists(filtered_items_path):
        raise FileNotFoundError(
            f"filtered_events {day} has no items table ({filtered_items_path}): it was written by a version of the "
            "filter chain that kept the catalogue columns on every event; rematerialize filtered_events for this day"
        )
    result = build_training_events(
        session.read.parquet(store.committed_uri(FILTERED_EVENTS, day, "events")),
        session.read.parquet(store.committed_uri(FILTERED_EVENTS, day, "items")),
        read_raw(session, store, "item_embeddings", day),
        read_raw(session, store, "users", users_day),
        spec.training_events,
        filter_stats["num_unique_items_post_filters"],
    )
    events_uri = store.version_uri(TRAINING_EVENTS, day, version, "events")
    try:
        with _job_description(session, f"{TRAINING_EVENTS} {day}: write events"):
            # Row groups of at most TRAINING_ROW_GROUP_BYTES: the training loader's unit of reading, shuffling and
            # sharding across data-parallel ranks (memory per piece in flight is one row group).
            # Files of ~target_file_mb: the filter chain's output count is known, so the partitions are merged to it.
            expected = filter_stats.get("num_events_post_filters")
            writer = sized_write(session, result.events, TRAINING_EVENTS, expected)
            writer.mode("overwrite").option("parquet.block.size", TRAINING_ROW_GROUP_BYTES).parquet(events_uri)
        result.finish_stats()
        with _job_description(session, f"{TRAINING_EVENTS} {day}: write items"):
            result.items.write.mode("overwrite").parquet(store.version_uri(TRAINING_EVENTS, day, version, "items"))
        schema, items_schema = _schema(result.events), _schema(result.items)
    finally:
        result.release()
    with _job_description(session, f"{TRAINING_EVENTS} {day}: count users"):
        num_users = count_users(session.read.parquet(events_uri))
    max_item_age_days = max(
        (f.max for f in spec.filters if getattr(f, "column", None) == "item_age_days" and f.max is not None),
        default=float("inf"),
    )
    # The blocking expectations, computed here, where the rows are (the cluster on Dataproc), on what was written.
    with _job_description(session, f"{TRAINING_EVENTS} {day}: expectations"):
        expectations = written_expectations(session, store, day, version, max_item_age_days)
    stats = {
        **result.stats,
        "num_users": num_users,
        "num_unique_items_post_filters": filter_stats["num_unique_items_post_filters"],
        "users_snapshot_day": users_day,
        "thresholds": spec.thresholds.model_dump(),
        "max_item_age_days": max_item_age_days,
        "expectations": expectations,
        "normalization": result.normalization,
        "schema": schema,
        "items_schema": items_schema,
        "run_time_s": round(time.monotonic() - t0, 2),
    }
    store.write_json_atomic(store.version_path(TRAINING_EVENTS, day, version, "stats.json"), stats)
    return stats


def written_expectations(session, store: DatasetStore, day: str, version: str, max_item_age_days: float) -> dict:
    """The training_events expectations (great-expectations suites, recsys_assets/datagen/expectations.py) on the
    rows of `version` as written: {"version", "rows": one summary row per expectation}. Runs in the Spark job."""
    from recsys_assets.datagen.expectations import items_suite, training_events_suite, validate

    events = session.read.parquet(store.version_uri(TRAINING_EVENTS, day, version, "events"))
    items = session.read.parquet(store.version_uri(TRAINING_EVENTS, day, version, "items"))
    rows = validate(
        {
            "training_events": (events, lambda: training_events_suite(max_item_age_days, events.columns)),
            "training_items": (items, lambda: items_suite(items.columns)),
        }
    )
    return {"version": version, "rows": rows}


def training_events_expectations_stage(session, store: DatasetStore, day: str, version: str, params: dict) -> dict:
    """The expectations of an existing training_events version, as a stage of its own (re-judging a version whose
    stats do not carry them for it); writes nothing."""
    stats = store.read_json(store.version_path(TRAINING_EVENTS, day, version, "stats.json"))
    out = written_expectations(session, store, day, version, float(stats.get("max_item_age_days", float("inf"))))
    return {"expectations": out, "num_expectations": len(out["rows"])}
