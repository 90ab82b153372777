"""The one Definitions: each domain's own definitions merged, plus the checks, plus the resources of this deployment.

Environments differ only in resource config: every value below falls back to the embedded local default (local
Spark, ./data, the packaged YAMLs, JSONL notifications) when its environment variable is unset. Tests, the demo
and benchmarks build the same Definitions with other resources (`build_defs`) and select jobs from it.
"""

from __future__ import annotations

import os

from dagster import Definitions, EnvVar, in_process_executor

import checks.definitions as checks_definitions
import recsys_assets.alerts.definitions as alerts
import recsys_assets.automation as automation
import recsys_assets.datagen.definitions as datagen
import recsys_assets.evaluation.definitions as evaluation
import recsys_assets.history.definitions as history
import recsys_assets.indexes.definitions as indexes
import recsys_assets.maintenance.definitions as maintenance
import recsys_assets.serving.definitions as serving
import recsys_assets.training.definitions as training
from recsys_assets.config.files import ConfigFilesResource
from recsys_assets.freshness import deployment_freshness_spec, with_freshness
from resources.dataproc import DataprocSparkResource
from resources.mlflow import MlflowResource
from resources.notifier import NotifierResource
from resources.postgres import PostgresResource
from resources.spark import SparkResource, SparkSubmitResource, default_class_archive
from resources.storage import DATA_ROOT_ENV, DEFAULT_DATA_ROOT, StorageResource
from resources.training import TrainingResource

# Modules, not their `defs`: Dagster's loader requires exactly one Definitions at this module's scope.
DOMAINS = (
    datagen,
    history,
    training,
    indexes,
    evaluation,
    serving,
    maintenance,
    alerts,
    automation,
    checks_definitions,
)


def _env(name: str, default: str):
    """EnvVar when set (resolved at run time, never stored), else the local default."""
    return EnvVar(name) if os.environ.get(name) else default


def spark_backend():
    """RECSYS_SPARK_BACKEND picks where Spark jobs run (the asset code is the same for all): `local` (default: in
    the Dagster process, master RECSYS_SPARK_MASTER), `submit` (spark-submit per job to RECSYS_SPARK_MASTER, stats
    back through Pipes), `dataproc` (Dataproc PySpark jobs, docs/dataproc.md)."""
    backend = os.environ.get("RECSYS_SPARK_BACKEND", "local")
    master = _env("RECSYS_SPARK_MASTER", "local[*]")
    class_archive = _env("RECSYS_SPARK_CLASS_ARCHIVE", default_class_archive())
    if backend == "local":
        return SparkResource(master=master, class_archive=class_archive)
    if backend == "submit":
        return SparkSubmitResource(master=master, class_archive=class_archive)
    if backend == "dataproc":
        return DataprocSparkResource(
            project_id=EnvVar("RECSYS_GCP_PROJECT"),
            region=_env("RECSYS_DATAPROC_REGION", "asia-south1"),
            staging_bucket=EnvVar("RECSYS_DATAPROC_STAGING_BUCKET"),
            cluster_name=_env("RECSYS_DATAPROC_CLUSTER", "recsys-datagen"),
            ephemeral_cluster=os.environ.get("RECSYS_DATAPROC_EPHEMERAL", "true").lower() == "true",
            service_account=_env("RECSYS_DATAPROC_SERVICE_ACCOUNT", ""),
        )
    raise ValueError(f"RECSYS_SPARK_BACKEND={backend!r}: expected local, submit or dataproc")


def default_resources() -> dict:
    return {
        "storage": StorageResource(data_root=_env(DATA_ROOT_ENV, DEFAULT_DATA_ROOT)),
        "config_files": ConfigFilesResource.from_env(),
        "spark": spark_backend(),
        # Where trainings run: in the run process (default), `torchrun` workers on this host, or `spark`
        # (TorchDistributor on the Spark backend's cluster: Dataproc GPU workers in production; docs/scale.md).
        "training": TrainingResource(
            device=_env("RECSYS_TRAINING_DEVICE", "auto"),
            launcher=os.environ.get("RECSYS_TRAINING_LAUNCHER", "in_process"),
            processes=int(os.environ.get("RECSYS_TRAINING_PROCESSES", "1")),
        ),
        # Registry, feed table: the machine's PostgreSQL by default; production sets RECSYS_PG_* (password from the
        # environment only).
        "postgres": PostgresResource.from_env(deferred=True),
        # MLflow (the team's view of runs and releases; the PostgreSQL registry stays the serving source of truth):
        # off unless MLFLOW_TRACKING_URI is set (`make demo` / `make ui`: a SQLite store in DAGSTER_HOME; production:
        # the tracking server, deploy/).
        "mlflow": MlflowResource(
            tracking_uri=_env("MLFLOW_TRACKING_URI", ""),
            ui_url=_env("RECSYS_MLFLOW_UI_URL", ""),
            artifact_root=_env("RECSYS_MLFLOW_ARTIFACT_ROOT", ""),
        ),
        "notifier": NotifierResource(
            info_webhook_url=_env("RECSYS_INFO_WEBHOOK_URL", ""),
            error_webhook_url=_env("RECSYS_ERROR_WEBHOOK_URL", ""),
        ),
    }


def build_defs(resources: dict, executor=in_process_executor) -> Definitions:
    """Every domain's definitions with these resources.

    Runs execute their steps in one process (the in-process executor) unless a job says otherwise: a datagen run's
    steps then share one Spark session (a JVM start costs seconds per step process), a range run's steps pay the
    code location's import once, and training steps are one at a time anyway (the training pool). Measured in
    docs/benchmarks.md (backfill). The raw, datagen, training and serving assets carry the daily FreshnessPolicy
    (recsys_assets/freshness.py)."""
    merged = Definitions.merge(
        *(domain.defs for domain in DOMAINS), Definitions(resources=resources, executor=executor)
    )
    return with_freshness(merged, deployment_freshness_spec())


defs = build_defs(default_resources())
