"""The Spark stages, by name: what one Spark job (in-process, spark-submit or Dataproc) runs for one day.

A stage is a plain function `(session, store, day, version, params) -> stats` that writes a version directory and
its stats.json and commits nothing; its module imports no Dagster. The registry names each function by import path,
so the submitted job (recsys_assets/core/spark_job.py) resolves any stage without this ground-floor module
importing the domain packages that own them (datagen, history). The asset side hands a stage to the Spark resource
as a `SparkJob` (`stage_job`) and publishes what it wrote (`write_with_stage`): the same partition layout on every
backend.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recsys_assets.core.datasets import (
    FEED_ROWS,
    FILTERED_EVENTS,
    ONLINE_EVALUATION,
    RANKER_MODEL,
    RETRIEVAL_MODEL,
    TRAINING_EVENTS,
    USER_HISTORY,
    VOCAB,
)
from recsys_assets.core.runs import DayRun
from recsys_assets.core.store_dirs import PartitionVersion
from resources.spark import SparkJob
from resources.store import DatasetStore


@dataclass(frozen=True)
class SparkStage:
    name: str
    entry: str  # "module:function" of the stage function
    row_count: str  # the stats key holding the written partition's row count
    manifest_stats: tuple[str, ...] = ()  # stats the partition's manifest records (None when the stage has none)

    def function(self) -> Callable[..., dict]:
        module, name = self.entry.split(":")
        return getattr(importlib.import_module(module), name)


TRAINING_EVENTS_EXPECTATIONS = "training_events_expectations"

SPARK_STAGES: dict[str, SparkStage] = {
    s.name: s
    for s in (
        SparkStage(FILTERED_EVENTS, "recsys_assets.datagen.stages:filtered_events_stage", "num_events_post_filters"),
        SparkStage(TRAINING_EVENTS, "recsys_assets.datagen.stages:training_events_stage", "num_final_rows"),
        # The blocking expectations of a written training_events version, on the backend (re-judging a version
        # whose stats lack them; the training_events stage computes them as it writes). Writes nothing.
        SparkStage(
            TRAINING_EVENTS_EXPECTATIONS,
            "recsys_assets.datagen.stages:training_events_expectations_stage",
            "num_expectations",
        ),
        SparkStage(USER_HISTORY, "recsys_assets.history.stage:user_history_stage", "users_with_history", ("coverage",)),
        # The training window's counts (tokens, dense sums, per-item label and positive counts) into the vocab's
        # version; the run process merges the vocabulary from them and publishes it.
        SparkStage(VOCAB, "recsys_assets.ml.window_counts:window_counts_stage", "window_rows"),
        # Model trainings: TorchDistributor workers on the cluster's executors (ml/launch.py); their stats are rank
        # 0's result (manifest, metrics, training history).
        SparkStage(RANKER_MODEL, "recsys_assets.ml.launch:training_stage", "trained_samples"),
        SparkStage(RETRIEVAL_MODEL, "recsys_assets.ml.launch:training_stage", "trained_samples"),
        # The day's feed scored on the executors (each Python worker loads the release once), as Parquet rows the
        # feed asset streams into PostgreSQL.
        SparkStage(FEED_ROWS, "recsys_assets.serving.feed_stage:feed_stage", "rows"),
        # The day's online CTR report from the impressions log and the next days' plays (a join on the executors).
        SparkStage(ONLINE_EVALUATION, "recsys_assets.serving.online_eval:online_evaluation_stage", "impressions"),
    )
}


def run_stage(session, stage: str, store: DatasetStore, day: str, version: str, params: dict) -> dict:
    """Run a stage by name with JSON-able params (what a submitted job receives on its command line)."""
    if stage not in SPARK_STAGES:
        raise ValueError(f"unknown Spark stage {stage!r}; known: {sorted(SPARK_STAGES)}")
    return SPARK_STAGES[stage].function()(session, store, day, version, params)


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


def stage_job(stage: str, store: DatasetStore, day: str, version: str, params: dict) -> SparkJob:
    """One stage as a SparkJob for the Spark resource: the stage function in-process, or spark_job.py with the same
    arguments when submitted (spark-submit, Dataproc)."""
    return SparkJob(
        name=job_name(stage, day),
        run=lambda session: run_stage(session, stage, store, day, version, params),
        job_file=str(Path(__file__).with_name("spark_job.py")),
        arguments=tuple(stage_arguments(stage, store.root_uri, day, version, params)),
        data_root=store.root_uri,
        labels={"stage": stage, "partition": day},
    )


def write_with_stage(
    run: DayRun, spark, context, stage: str, params: dict, **manifest: object
) -> tuple[PartitionVersion, dict]:
    """A partition written by a Spark stage: new version -> the stage on the Spark resource -> publish (row count
    from the stage's stats). Returns the version and the stats."""
    out = run.new_version(stage)
    stats = spark.run_job(context, stage_job(stage, run.store, run.day, out.version, params))
    spec = SPARK_STAGES[stage]
    out.publish(row_count=stats[spec.row_count], **{k: stats.get(k) for k in spec.manifest_stats}, **manifest)
    return out, stats
