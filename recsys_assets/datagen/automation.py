"""What starts datagen and who hears about its days: the success-file sensor (upstream's completeness signal), the
08:30 fallback schedule, the late-raw-data alert and the daily monitoring summary."""

import datetime as dt
import json
import re

from dagster import (
    AssetMaterialization,
    DefaultSensorStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)

from recsys_assets.config.files import ConfigFilesResource
from recsys_assets.core.days import APP_TIMEZONE, PARTITIONS_START, last_complete_day, window_of
from recsys_assets.core.schemas import RAW_TABLES
from recsys_assets.datagen.assets import datagen_monitoring_report
from recsys_assets.datagen.jobs import datagen_job
from recsys_assets.datagen.monitoring import in_bucket_order
from recsys_assets.datagen.raw_sources import raw_asset_key
from resources.notifier import NotifierResource
from resources.storage import StorageResource

DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Days remembered one by one in the success-file cursor; older ones are summarised by a floor (see SuccessFileCursor).
CURSOR_DAYS_KEPT = 400


class SuccessFileCursor:
    """What the success-file sensor has reported, for any number of days in a bounded cursor: the newest
    CURSOR_DAYS_KEPT days with their file's mtime, and a floor for the rest (the newest day forgotten, and the newest
    mtime among forgotten files). A day at or below the floor counts as new only when its file is newer than every
    forgotten one (upstream re-delivered it), so old days are never reported again just because the cursor is full."""

    def __init__(self, raw: str | None):
        data = json.loads(raw) if raw else {}
        if "seen" not in data:  # the cursor before floors: {day: mtime_ns}
            data = {"seen": data}
        self.seen: dict[str, int] = {d: int(m) for d, m in data["seen"].items()}
        self.floor_day: str | None = data.get("floor_day")
        self.floor_mtime_ns: int = int(data.get("floor_mtime_ns", 0))

    def is_new(self, day: str, mtime_ns: int) -> bool:
        if day in self.seen:
            return self.seen[day] != mtime_ns
        if self.floor_day is not None and day <= self.floor_day:
            return mtime_ns > self.floor_mtime_ns
        return True

    def record(self, day: str, mtime_ns: int) -> None:
        self.seen[day] = mtime_ns

    def dump(self) -> str:
        days = sorted(self.seen)
        for day in days[: max(0, len(days) - CURSOR_DAYS_KEPT)]:
            mtime = self.seen.pop(day)
            self.floor_day = max(self.floor_day or day, day)
            self.floor_mtime_ns = max(self.floor_mtime_ns, mtime)
        return json.dumps(
            {"seen": self.seen, "floor_day": self.floor_day, "floor_mtime_ns": self.floor_mtime_ns}, sort_keys=True
        )


def new_success_files(files: list[tuple[str, int]], cursor: SuccessFileCursor) -> list[tuple[str, int]]:
    """(day, mtime_ns) of success files not reported before, or rewritten since (a re-delivered day reruns)."""
    return [(day, m) for day, m in files if DAY_RE.match(day) and day >= PARTITIONS_START and cursor.is_new(day, m)]


@sensor(
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Records a day's raw inputs as materialized once raw/daily_success_files/<day> exists (again when "
    "the file is rewritten); Declarative Automation then runs the day's datagen.",
)
def raw_success_file_sensor(context: SensorEvaluationContext, storage: StorageResource):
    cursor = SuccessFileCursor(context.cursor)
    files = [(i.base_name, int(i.mtime_ns or 0)) for i in storage.store.list_success_files()]
    fresh = new_success_files(files, cursor)
    if not fresh:
        return SkipReason(f"no new success files ({len(files)} seen)")
    events = []
    for day, mtime in fresh:
        events += [
            AssetMaterialization(
                asset_key=raw_asset_key(t),
                partition=day,
                metadata={"path": storage.store.raw_partition_uri(t, day), "success_file_mtime_ns": mtime},
            )
            for t in RAW_TABLES
        ]
        cursor.record(day, mtime)
    return SensorResult(asset_events=events, cursor=cursor.dump())


def overdue_days(
    now: dt.datetime, present: set[str], lookback_days: int, due_after_h: float, alert_after_h: float
) -> list[str]:
    """Days (the most recent `lookback_days` whose deadline has passed) whose success file is still missing."""
    out = []
    day = dt.date.fromisoformat(last_complete_day(now))
    for back in range(lookback_days + 1):
        d = (day - dt.timedelta(days=back)).isoformat()
        if d < PARTITIONS_START:
            break
        deadline = window_of(d).end + dt.timedelta(hours=due_after_h + alert_after_h)
        if now >= deadline and d not in present:
            out.append(d)
    return sorted(out)


@sensor(
    minimum_interval_seconds=600,
    default_status=DefaultSensorStatus.RUNNING,
    description="Error notification when a day's raw data (success file) is still missing hours after it is due.",
)
def raw_data_freshness_sensor(
    context: SensorEvaluationContext,
    storage: StorageResource,
    notifier: NotifierResource,
    config_files: ConfigFilesResource,
):
    f = config_files.datagen_spec().freshness
    alerted: list[str] = json.loads(context.cursor) if context.cursor else []
    present = {i.base_name for i in storage.store.list_success_files()}
    late = overdue_days(
        dt.datetime.now(dt.UTC), present, f.lookback_days, f.raw_due_hours_after_day_end, f.alert_after_hours
    )
    new = [d for d in late if d not in alerted]
    for d in new:
        notifier.enqueue(
            "error",
            f"Raw data missing for {d}",
            f"raw/daily_success_files/{d} is still missing {f.alert_after_hours:g} h after it was due "
            f"({f.raw_due_hours_after_day_end:g} h after the day ended, Asia/Kolkata).",
            key=f"raw_missing:{d}",
            partition=d,
        )
    context.update_cursor(json.dumps(sorted(set(alerted) | set(new))[-60:]))
    return SkipReason(f"raw data overdue: {late}" if late else "raw data on time")


@sensor(
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Info notification with each day's monitoring summary when its report is materialized "
    "(every materialization, also during backfills).",
)
def monitoring_summary_sensor(context: SensorEvaluationContext, notifier: NotifierResource):
    page = context.instance.fetch_materializations(
        datagen_monitoring_report.key, limit=100, cursor=context.cursor, ascending=True
    )
    queued = 0
    for record in page.records:
        mat = record.asset_materialization
        if "monitoring_dict" not in mat.metadata:
            continue  # a range run's own record of the range; each day's report follows as its own materialization
        report = mat.metadata["monitoring_dict"].value
        queued += 1
        buckets = in_bucket_order(report["item_age_bucket_formated"])
        notifier.enqueue(
            "info",
            f"Datagen {mat.partition}: {report['num_final_rows']:,} rows, "
            f"{report['num_items_post_embed_join']:,} items",
            "age buckets: " + ", ".join(f"{k} {v}" for k, v in buckets),
            key=f"monitoring_summary:{record.storage_id}",
            partition=mat.partition,
            new_items_1d=report["new_items_in_index_1d_delta"] or "n/a",
            item_diff_1d=report["item_diff_1d_delta"] or "n/a",
            item_diff_7d=report["item_diff_7d_delta"] or "n/a",
            run_time=report["datagen_run_time"],
        )
    if page.records:
        context.update_cursor(page.cursor)
    return SkipReason(f"queued {queued} summaries")


@schedule(
    job=datagen_job,
    cron_schedule="30 8 * * *",
    execution_timezone=APP_TIMEZONE,
    description="Fallback at 08:30 Asia/Kolkata: yesterday's datagen if it has not run and its raw data is complete.",
)
def datagen_fallback_schedule(context: ScheduleEvaluationContext, storage: StorageResource):
    now = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
    day = last_complete_day(now)
    done = context.instance.get_materialized_partitions(datagen_monitoring_report.key)
    if day in done:
        return SkipReason(f"{day} already materialized")
    if not storage.store.exists(storage.store.raw_success_file(day)):
        return SkipReason(f"{day}: success file missing (the freshness sensor alerts)")
    return RunRequest(partition_key=day, run_key=f"fallback:{day}", tags={"recsys/trigger": "fallback_schedule"})


datagen_sensors = [raw_success_file_sensor, raw_data_freshness_sensor, monitoring_summary_sensor]
datagen_schedules = [datagen_fallback_schedule]
