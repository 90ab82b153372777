"""One UI action to roll production back: launch `rollback_model_job` (Launchpad: optional reason) and the
registry returns production to the version the current one replaced, then a new serving config version is
published with the rolled-back arms. The same as `python -m recsys_assets.serving.registry rollback` followed by
materializing serving_config."""

from dagster import Config, MetadataValue, OpExecutionContext, Output, job, op

from recsys_assets.config.files import ConfigFilesResource
from recsys_assets.serving import registry
from resources.postgres import PostgresResource
from resources.storage import StorageResource


class RollbackConfig(Config):
    reason: str = "rollback from the Dagster UI"


@op(description="Production -> the version it replaced; publish a serving config for the new arms.")
def rollback_production(
    context: OpExecutionContext,
    config: RollbackConfig,
    storage: StorageResource,
    postgres: PostgresResource,
    config_files: ConfigFilesResource,
):
    from recsys_assets.serving.serving_config import publish_serving_config

    spec = config_files.serving_spec()
    with postgres.connect() as conn:
        registry.ensure_schema(conn)
        frm, to = registry.rollback(conn, spec.model_name, config.reason, actor=f"dagster run {context.run_id}")
        cfg, problems = publish_serving_config(storage.store, conn, spec)
    if problems:
        raise RuntimeError(f"rolled back {frm} -> {to}, but the new serving config is invalid: {'; '.join(problems)}")
    context.log.info(f"{spec.model_name}: production v{frm} -> v{to}; serving config v{cfg['config_version']}")
    yield Output(
        None,
        metadata={
            "from_version": MetadataValue.int(frm),
            "to_version": MetadataValue.int(to),
            "serving_config_version": MetadataValue.int(cfg["config_version"]),
        },
    )


@job(
    description="Roll production back to the previous model version and republish the serving config.",
    tags={"recsys/stage": "serving"},
)
def rollback_model_job():
    rollback_production()
