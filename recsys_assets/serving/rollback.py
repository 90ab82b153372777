"""One UI action to roll production back: launch `rollback_model_job` (Launchpad: optional reason). The target
release is verified (every file, every recorded hash), then the registry returns production to the version the
current one replaced and a serving config for the rolled-back arms is published, together or not at all; production
stays pinned there until a person promotes a version. The same as `python -m recsys_assets.serving.registry
rollback` (recsys_assets/serving/releases.py does both)."""

from dagster import Config, Failure, MetadataValue, OpExecutionContext, Output, job, op

from recsys_assets.config.files import ConfigFilesResource
from recsys_assets.serving import registry
from recsys_assets.serving.mlflow_mirror import sync_mlflow
from recsys_assets.serving.releases import rollback_production as roll_back
from resources.mlflow import MlflowResource
from resources.postgres import PostgresResource
from resources.storage import StorageResource


class RollbackConfig(Config):
    reason: str = "rollback from the Dagster UI"


@op(description="Production -> the version it replaced (verified, pinned); publish a serving config for the new arms.")
def rollback_production(
    context: OpExecutionContext,
    config: RollbackConfig,
    storage: StorageResource,
    postgres: PostgresResource,
    config_files: ConfigFilesResource,
    mlflow: MlflowResource,
):
    spec = config_files.serving_spec()
    actor = f"dagster run {context.run_id}"
    try:
        with postgres.connect() as conn:
            frm, to, cfg = roll_back(storage.store, conn, spec, config.reason, actor)
            mirrored = sync_mlflow(mlflow, storage.store, conn, spec.model_name)
    except registry.PromotionRefused as e:
        raise Failure(str(e)) from None
    context.log.info(f"{spec.model_name}: production v{frm} -> v{to} (pinned); serving config v{cfg['config_version']}")
    yield Output(
        None,
        metadata={
            "from_version": MetadataValue.int(frm),
            "to_version": MetadataValue.int(to),
            "pinned": "until a person promotes a version (python -m recsys_assets.serving.registry promote)",
            "serving_config_version": MetadataValue.int(cfg["config_version"]),
            **mirrored,
        },
    )


@job(
    description="Roll production back to the previous model version (verified first, then pinned) and republish the "
    "serving config.",
    tags={"recsys/stage": "serving"},
)
def rollback_model_job():
    rollback_production()
