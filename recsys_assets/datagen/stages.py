"""The datagen Spark jobs as plain functions of (SparkSession, store, day, version): read, transform, write the
version directory and its stats.json, return the stats. Nothing here commits.

The same functions run in-process (local Spark or a standalone master), in a spark-submit'ed process, or as a
Dataproc PySpark job (`recsys_assets.datagen.spark_job`): the Dagster asset commits the version afterwards from
the stats the job handed back, so every backend produces byte-for-byte the same partition layout.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from contextlib import contextmanager
from pathlib import Path

from recsys_assets.core.datasets import FILTERED_EVENTS, TRAINING_EVENTS, USER_HISTORY
from recsys_assets.core.partitions import window_micros, window_of
from recsys_assets.datagen.config import DatagenSpec, load_datagen_spec, parse_datagen_spec
from recsys_assets.datagen.raw_inputs import latest_raw_day, read_raw
from resources.spark import SparkJob
from resources.storage import DatasetStore

# The Spark transformations (filter_chain, training_events) are imported inside the stage functions: training
# hosts import TRAINING_EVENTS / read_final_items from here and need no pyspark installed.

STAGES = (FILTERED_EVENTS, TRAINING_EVENTS, USER_HISTORY)


def read_final_items(store: DatasetStore, day: str, columns: list[str] | None = None):
    """The final items (item-sized) of a committed training_events partition as a pyarrow table."""
    import pyarrow.dataset as pads

    return pads.dataset(
        store.committed_path(TRAINING_EVENTS, day, "items"), filesystem=store.fs, format="parquet"
    ).to_table(columns=columns)


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


def filtered_events_stage(
    session, store: DatasetStore, day: str, version: str, spec: DatagenSpec | None = None
) -> dict:
    from recsys_assets.datagen.filter_chain import run_filter_chain

    started_at, t0 = _now(), time.monotonic()
    spec = spec or load_datagen_spec()
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


def training_events_stage(
    session,
    store: DatasetStore,
    day: str,
    version: str,
    spec: DatagenSpec | None = None,
    te_spec=None,
) -> dict:
    from recsys_assets.datagen.training_events import TrainingEventsSpec, build_training_events, count_users

    te_spec = te_spec or TrainingEventsSpec()
    t0 = time.monotonic()
    filter_stats = store.read_json(store.committed_path(FILTERED_EVENTS, day, "stats.json"))
    spec = spec or load_datagen_spec()
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
        te_spec,
        filter_stats["num_unique_items_post_filters"],
    )
    events_uri = store.version_uri(TRAINING_EVENTS, day, version, "events")
    try:
        with _job_description(session, f"{TRAINING_EVENTS} {day}: write events"):
            result.events.write.mode("overwrite").parquet(events_uri)
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


def run_stage(session, stage: str, store: DatasetStore, day: str, version: str, params: dict) -> dict:
    """Dispatch by stage name with JSON-able params (what a submitted job receives on its command line). The datagen
    spec travels as its validated content (`datagen_spec`), so a submitted job needs no access to the YAML file."""
    spec = parse_datagen_spec(params["datagen_spec"], "job parameters") if params.get("datagen_spec") else None
    if stage == FILTERED_EVENTS:
        return filtered_events_stage(session, store, day, version, spec)
    if stage == TRAINING_EVENTS:
        from recsys_assets.datagen.training_events import TrainingEventsSpec

        te = params.get("training_events_spec") or {}
        te_spec = TrainingEventsSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in te.items()})
        return training_events_stage(session, store, day, version, spec, te_spec)
    if stage == USER_HISTORY:
        from recsys_assets.datagen.user_history import user_history_stage

        return user_history_stage(session, store, day, version, params["user_history"])
    raise ValueError(f"unknown datagen stage {stage!r}; known: {STAGES}")


def job_name(stage: str, day: str) -> str:
    return f"{stage} {day}"


def stage_arguments(stage: str, data_root: str, day: str, version: str, params: dict) -> list[str]:
    """The command line of `spark_job.py` for one stage (what the job's parser reads)."""
    return [
        "--stage",
        stage,
        "--data-root",
        data_root,
        "--day",
        day,
        "--version",
        version,
        "--params-json",
        json.dumps(params, sort_keys=True),
    ]


def stage_job(
    stage: str, store: DatasetStore, day: str, version: str, spec: DatagenSpec | None, extra: dict | None = None
) -> SparkJob:
    """One datagen stage as a SparkJob for the Spark resource: the stage function in-process, or spark_job.py with
    the same arguments when submitted (spark-submit, Dataproc)."""
    params = {**({"datagen_spec": spec.model_dump(mode="json")} if spec is not None else {}), **(extra or {})}
    return SparkJob(
        name=job_name(stage, day),
        run=lambda session: run_stage(session, stage, store, day, version, params),
        job_file=str(Path(__file__).with_name("spark_job.py")),
        arguments=tuple(stage_arguments(stage, store.root_uri, day, version, params)),
        data_root=store.root_uri,
        labels={"stage": stage, "partition": day},
    )
