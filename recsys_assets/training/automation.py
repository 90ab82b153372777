"""What starts training: a day's training_job when that day's datagen run succeeds."""

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunStatusSensorContext,
    SkipReason,
    run_status_sensor,
)

from recsys_assets.datagen.jobs import datagen_job
from recsys_assets.training.config import load_training_spec
from recsys_assets.training.jobs import training_job
from recsys_assets.training.windows import NoTrainingDataError, window_for
from resources.config_files import ConfigFilesResource
from resources.storage import StorageResource


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=[datagen_job],
    request_job=training_job,
    default_status=DefaultSensorStatus.RUNNING,
    description="Starts training_job for a day when its datagen run succeeds (models for day D validate on D).",
)
def training_after_datagen_sensor(
    context: RunStatusSensorContext, storage: StorageResource, config_files: ConfigFilesResource
):
    run = context.dagster_run
    day = run.tags.get("dagster/partition")
    if not day:
        return SkipReason(f"datagen run {run.run_id} has no partition")
    try:  # the first days of a deployment have nothing to train on yet: skip, don't start a run that must fail
        window_for(storage.store, day, load_training_spec(config_files.training))
    except NoTrainingDataError as e:
        return SkipReason(str(e))
    return RunRequest(
        partition_key=day, run_key=f"training:{day}:{run.run_id}", tags={"recsys/trigger": "datagen_success"}
    )
