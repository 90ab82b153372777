"""What starts online_evaluation: the serving side's impressions log for a day landing. (The day's serving assets
are started by Declarative Automation once its models passed their blocking checks: serving/assets.py.)"""

import datetime as dt
import posixpath

import pyarrow.fs as pafs
from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from recsys_assets.core.partitions import last_complete_day
from recsys_assets.serving.jobs import online_evaluation_job
from recsys_assets.serving.serving_config import load_serving_spec, log_path
from resources.config_files import ConfigFilesResource
from resources.storage import StorageResource


@sensor(
    job=online_evaluation_job,
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.RUNNING,
    description="Starts online_evaluation for a feed day once the serving side's impressions log for it has a "
    "_SUCCESS marker (one run per day and marker).",
)
def impressions_log_sensor(
    context: SensorEvaluationContext, storage: StorageResource, config_files: ConfigFilesResource
):
    store, template = storage.store, load_serving_spec(config_files.serving).online_evaluation.impressions_log
    today = last_complete_day(dt.datetime.now(dt.UTC))
    days = [(dt.date.fromisoformat(today) - dt.timedelta(days=i)).isoformat() for i in range(0, 14)]
    requests = []
    for day in days:
        marker = posixpath.join(log_path(template, store, day), "_SUCCESS")
        info = store.fs.get_file_info(marker)
        if info.type == pafs.FileType.File:
            requests.append(
                RunRequest(
                    partition_key=day,
                    run_key=f"online_eval:{day}:{info.mtime_ns}",
                    tags={"recsys/trigger": "impressions_log"},
                )
            )
    return requests or SkipReason("no impressions logs in the last 14 days")
