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
            result.filtered_events.write.mode("overwrite").parquet(
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
            result.events.write.mode("overwrite").option("parquet.block.size", TRAINING_ROW_GROUP_BYTES).parquet(
                events_uri
            )
        result.finish_stats()
        with _job_description(session, f"{TRAINING_EVENTS} {day}: write items"):
            result.items.write.mode("overwrite").parquet(store.version_uri(TRAINING_EVENTS, day, version, "items"))
        schema, items_schema = _schema(result.events), _schema(result.items)
    finally:
        result.release()
    with _job_description(session, f"{TRAINING_EVENTS} {day}: count users"):
        num_users = count_users(session.read.parquet(events_uri))
    stats = {
        **result.stats,
        "num_users": num_users,
        "num_unique_items_post_filters": filter_stats["num_unique_items_post_filters"],
        "users_snapshot_day": users_day,
        "thresholds": spec.thresholds.model_dump(),
        "max_item_age_days": max(
            (f.max for f in spec.filters if getattr(f, "column", None) == "item_age_days" and f.max is not None),
            default=float("inf"),
        ),
        "normalization": result.normalization,
        "schema": schema,
        "items_schema": items_schema,
        "run_time_s": round(time.monotonic() - t0, 2),
    }
    store.write_json_atomic(store.version_path(TRAINING_EVENTS, day, version, "stats.json"), stats)
    return stats
