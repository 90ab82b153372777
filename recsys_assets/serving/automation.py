"""What starts serving: the day's hand-off assets are started by Declarative Automation for the newest day once every
input is there and its models passed their blocking checks (`SERVE_NEWEST_DAY`: all_deps_blocking_checks_passed
keeps a day whose models failed an AUC or recall gate from serving); online_evaluation starts when the serving
side's impressions log for a day lands (a sensor)."""

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

from recsys_assets.config.files import ConfigFilesResource
from recsys_assets.core.automation import after_upstream
from recsys_assets.core.days import last_complete_day
from recsys_assets.serving.jobs import online_evaluation_job
from recsys_assets.serving.serving_config import log_path
from resources.storage import StorageResource

# The newest day only, once every input of the day is there (a backfill must not re-promote old models).
SERVE_NEWEST_DAY = after_upstream(None, lookback_days=None, all_deps_present=True)


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
    store, template = storage.store, config_files.serving_spec().online_evaluation.impressions_log
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
