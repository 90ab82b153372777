"""The one Definitions object: assets, checks, jobs, schedules, sensors and resources on one screen.

Environments differ only in resource config: every value below falls back to the embedded local default
(local Spark, ./data, JSONL notifications) when its environment variable is unset.
"""

from __future__ import annotations

import os

from dagster import Definitions, EnvVar

from checks.datagen_checks import datagen_checks
from checks.model_checks import model_checks
from checks.serving_checks import serving_checks
from recsys_assets.automation.jobs import (
    datagen_job, online_evaluation_job, retention_job, serving_job, training_job,
)
from recsys_assets.automation.schedules import datagen_fallback_schedule, retention_schedule
from recsys_assets.automation.sensors import datagen_sensors
from recsys_assets.datagen.assets import datagen_assets
from recsys_assets.datagen.raw_sources import raw_specs
from recsys_assets.indexes.assets import index_assets
from recsys_assets.maintenance.assets import storage_retention
from recsys_assets.serving.assets import serving_assets
from recsys_assets.serving.rollback import rollback_model_job
from recsys_assets.training.assets import training_assets
from recsys_assets.training.offline_evaluation import offline_evaluation
from resources.notifier import NotifierResource
from resources.postgres import PostgresResource
from resources.dataproc import DataprocSparkResource
from resources.spark import SparkResource, SparkSubmitResource
from resources.storage import StorageResource
from resources.training import TrainingResource


def _env(name: str, default: str):
    """EnvVar when set (resolved at run time, never stored), else the local default."""
    import os

    return EnvVar(name) if os.environ.get(name) else default


def spark_backend():
    """RECSYS_SPARK_BACKEND picks where the datagen Spark stages run (the asset code is the same for all):
    `local` (default: in the Dagster process, master RECSYS_SPARK_MASTER), `submit` (spark-submit per stage to
    RECSYS_SPARK_MASTER, stats back through Pipes), `dataproc` (Dataproc PySpark jobs, docs/dataproc.md)."""
    import os

    backend = os.environ.get("RECSYS_SPARK_BACKEND", "local")
    master = _env("RECSYS_SPARK_MASTER", "local[*]")
    if backend == "local":
        return SparkResource(master=master)
    if backend == "submit":
        return SparkSubmitResource(master=master)
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
        "storage": StorageResource(data_root=_env("RECSYS_DATA_ROOT", "./data")),
        "spark": spark_backend(),
        "training": TrainingResource(device=_env("RECSYS_TRAINING_DEVICE", "auto")),
        # Registry, feed table: the machine's PostgreSQL by default; production sets RECSYS_PG_* (password from the
        # environment only).
        "postgres": PostgresResource(
            host=_env("RECSYS_PG_HOST", "127.0.0.1"),
            port=int(os.environ.get("RECSYS_PG_PORT", "5432")),
            user=_env("RECSYS_PG_USER", "postgres"),
            password=_env("RECSYS_PG_PASSWORD", ""),
            dbname=_env("RECSYS_PG_DB", "recsys"),
        ),
        "notifier": NotifierResource(
            info_webhook_url=_env("RECSYS_INFO_WEBHOOK_URL", ""),
            error_webhook_url=_env("RECSYS_ERROR_WEBHOOK_URL", ""),
        ),
    }


defs = Definitions(
    assets=[*raw_specs, *datagen_assets, *training_assets, *index_assets, offline_evaluation, *serving_assets,
            storage_retention],
    asset_checks=[*datagen_checks, *model_checks, *serving_checks],
    jobs=[datagen_job, training_job, serving_job, online_evaluation_job, rollback_model_job, retention_job],
    schedules=[datagen_fallback_schedule, retention_schedule],
    sensors=datagen_sensors,
    resources=default_resources(),
)
