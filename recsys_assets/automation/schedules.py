"""The 08:30 IST fallback schedule: runs yesterday's datagen if the success-file sensor has not."""


import datetime as dt

from dagster import RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from recsys_assets.automation.jobs import datagen_job, retention_job
from recsys_assets.datagen.assets import datagen_monitoring_report
from recsys_assets.partitions import APP_TIMEZONE, last_complete_day
from resources.storage import StorageResource


@schedule(
    job=datagen_job,
    cron_schedule="30 8 * * *",
    execution_timezone=APP_TIMEZONE,
    description="Fallback at 08:30 Asia/Kolkata: yesterday's datagen if it has not run and its raw data is complete.",
)
def datagen_fallback_schedule(context: ScheduleEvaluationContext, storage: StorageResource):
    now = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
    day = last_complete_day(now)
    done = context.instance.get_materialized_partitions(datagen_monitoring_report.key)
    if day in done:
        return SkipReason(f"{day} already materialized")
    if not storage.store.exists(storage.store.raw_success_file(day)):
        return SkipReason(f"{day}: success file missing (the freshness sensor alerts)")
    return RunRequest(partition_key=day, run_key=f"fallback:{day}", tags={"recsys/trigger": "fallback_schedule"})


@schedule(
    job=retention_job,
    cron_schedule="0 3 * * *",
    execution_timezone=APP_TIMEZONE,
    description="Nightly retention at 03:00 Asia/Kolkata, after the day's training has finished.",
)
def retention_schedule(context: ScheduleEvaluationContext):
    return RunRequest(run_key=f"retention:{context.scheduled_execution_time:%Y-%m-%d}")
