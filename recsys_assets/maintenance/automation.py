"""The nightly retention run."""

from dagster import AssetSelection, RunRequest, ScheduleEvaluationContext, define_asset_job, schedule

from recsys_assets.core.days import APP_TIMEZONE

retention_job = define_asset_job(
    "retention_job",
    selection=AssetSelection.groups("maintenance"),
    description="Delete expired partitions and abandoned staging data (config dry_run: true to only report).",
    tags={"recsys/stage": "maintenance"},
)


@schedule(
    job=retention_job,
    cron_schedule="0 3 * * *",
    execution_timezone=APP_TIMEZONE,
    description="Nightly retention at 03:00 Asia/Kolkata, after the day's training has finished.",
)
def retention_schedule(context: ScheduleEvaluationContext):
    return RunRequest(run_key=f"retention:{context.scheduled_execution_time:%Y-%m-%d}")
