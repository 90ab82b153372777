"""Sensors: start datagen when upstream's success file lands, alert on late raw data, failed checks and failed
runs, and post the daily monitoring summary."""


import datetime as dt
import json
import re

import pyarrow.fs as pafs

from dagster import (
    AssetCheckKey,
    AssetMaterialization,
    DefaultSensorStatus,
    DagsterRunStatus,
    RunFailureSensorContext,
    RunStatusSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from checks.datagen_checks import datagen_checks
from checks.model_checks import model_checks
from checks.serving_checks import serving_checks
from recsys_assets.automation.jobs import datagen_job, online_evaluation_job, serving_job, training_job
from recsys_assets.datagen.assets import datagen_monitoring_report
from recsys_assets.datagen.config import load_datagen_spec
from recsys_assets.datagen.monitoring import in_bucket_order
from recsys_assets.datagen.raw_sources import raw_asset_key
from recsys_assets.partitions import PARTITIONS_START, last_complete_day, window_of
from recsys_assets.schemas import RAW_TABLES
from recsys_assets.training.config import load_training_spec
from recsys_assets.training.windows import NoTrainingDataError, window_for
from resources.notifier import NotifierResource
from resources.storage import StorageResource

DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Days remembered in the success-file cursor (older success files are never re-read).
CURSOR_DAYS_KEPT = 400


def new_success_files(files: list[tuple[str, int]], seen: dict[str, int]) -> list[tuple[str, int]]:
    """(day, mtime_ns) of success files not seen before, or rewritten since (a re-delivered day reruns)."""
    return [(day, m) for day, m in files if DAY_RE.match(day) and day >= PARTITIONS_START and seen.get(day) != m]


@sensor(
    job=datagen_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests the datagen run for a day once raw/daily_success_files/<day> exists (once per file "
    "version), and records the raw inputs' partitions as materialized.",
)
def raw_success_file_sensor(context: SensorEvaluationContext, storage: StorageResource):
    seen: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    files = [(i.base_name, int(i.mtime_ns or 0)) for i in storage.store.list_success_files()]
    fresh = new_success_files(files, seen)
    if not fresh:
        return SkipReason(f"no new success files ({len(files)} seen)")
    run_requests, events = [], []
    for day, mtime in fresh:
        run_requests.append(
            RunRequest(partition_key=day, run_key=f"datagen:{day}:{mtime}", tags={"recsys/trigger": "success_file"})
        )
        events += [
            AssetMaterialization(
                asset_key=raw_asset_key(t),
                partition=day,
                metadata={"path": storage.store.raw_partition_uri(t, day), "success_file_mtime_ns": mtime},
            )
            for t in RAW_TABLES
        ]
        seen[day] = mtime
    keep = dict(sorted(seen.items())[-CURSOR_DAYS_KEPT:])
    return SensorResult(run_requests=run_requests, asset_events=events, cursor=json.dumps(keep, sort_keys=True))


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
def raw_data_freshness_sensor(context: SensorEvaluationContext, storage: StorageResource, notifier: NotifierResource):
    f = load_datagen_spec().freshness
    alerted: list[str] = json.loads(context.cursor) if context.cursor else []
    present = {i.base_name for i in storage.store.list_success_files()}
    late = overdue_days(
        dt.datetime.now(dt.timezone.utc), present, f.lookback_days, f.raw_due_hours_after_day_end, f.alert_after_hours
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


CHECK_KEYS: list[AssetCheckKey] = [key for c in [*datagen_checks, *model_checks, *serving_checks] for key in c.check_keys]


def _fmt_metadata(metadata: dict) -> dict:
    out = {}
    for k, v in metadata.items():
        val = getattr(v, "value", v)
        if isinstance(val, (int, float, str)) and len(str(val)) < 300:
            out[k] = val
    return out


@sensor(
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Queues an error notification for every failed evaluation of a datagen, model, index or serving check "
    "(WARN ones too, which do not fail runs): which check, partition, numbers. Delivery is "
    "notification_delivery_sensor's, so a slow webhook never holds this tick or its cursor back.",
)
def check_failure_sensor(context: SensorEvaluationContext, notifier: NotifierResource):
    # Cursor: the highest check-execution record id already handled per check (history pages backwards).
    cursor: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    storage = context.instance.event_log_storage
    queued = 0
    for key in CHECK_KEYS:
        name = key.to_user_string()
        last_id = cursor.get(name, 0)
        records = storage.get_asset_check_execution_history(key, limit=100)
        for rec in sorted((r for r in records if r.id > last_id), key=lambda r: r.id):
            ev = rec.evaluation
            if rec.status == AssetCheckExecutionRecordStatus.FAILED and ev is not None and not ev.passed:
                queued += notifier.enqueue(
                    "error",
                    f"Check failed: {name}",
                    ev.description or "",
                    key=f"check_failure:{name}:{rec.id}",
                    partition=rec.partition or "-",
                    severity=ev.severity.value,
                    run_id=rec.run_id,
                    **_fmt_metadata(ev.metadata),
                )
        if records:
            cursor[name] = max(last_id, max(r.id for r in records))
    context.update_cursor(json.dumps(cursor, sort_keys=True))
    return SkipReason(f"queued {queued} check-failure notifications")


@run_failure_sensor(
    monitored_jobs=[datagen_job, training_job, serving_job, online_evaluation_job],
    default_status=DefaultSensorStatus.RUNNING,
    description="Error notification for every failed datagen, training or serving run (a blocking check fails it).",
)
def datagen_run_failure_sensor(context: RunFailureSensorContext, notifier: NotifierResource):
    run = context.dagster_run
    notifier.enqueue(
        "error",
        f"Run failed: {run.job_name}",
        (context.failure_event.message or "")[:1000],
        key=f"run_failure:{run.run_id}",
        partition=run.tags.get("dagster/partition", "-"),
        run_id=run.run_id,
    )


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
    for record in page.records:
        mat = record.asset_materialization
        report = mat.metadata["monitoring_dict"].value
        buckets = in_bucket_order(report["item_age_bucket_formated"])
        notifier.enqueue(
            "info",
            f"Datagen {mat.partition}: {report['num_final_rows']:,} rows, {report['num_items_post_embed_join']:,} items",
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
    return SkipReason(f"queued {len(page.records)} summaries")


@sensor(
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Delivers queued notifications (check failures, failed runs, late raw data, daily summaries) to the "
    "info/error webhooks within a time budget per tick; a down or hanging webhook is retried with backoff and "
    "never re-sent what it already received.",
)
def notification_delivery_sensor(context: SensorEvaluationContext, notifier: NotifierResource):
    counts = notifier.deliver_pending()
    return SkipReason(", ".join(f"{k} {v}" for k, v in counts.items()))


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=[datagen_job],
    request_job=training_job,
    default_status=DefaultSensorStatus.RUNNING,
    description="Starts training_job for a day when its datagen run succeeds (models for day D validate on D).",
)
def training_after_datagen_sensor(context: RunStatusSensorContext, storage: StorageResource):
    run = context.dagster_run
    day = run.tags.get("dagster/partition")
    if not day:
        return SkipReason(f"datagen run {run.run_id} has no partition")
    try:  # the first days of a deployment have nothing to train on yet: skip, don't start a run that must fail
        window_for(storage.store, day, load_training_spec())
    except NoTrainingDataError as e:
        return SkipReason(str(e))
    return RunRequest(partition_key=day, run_key=f"training:{day}:{run.run_id}", tags={"recsys/trigger": "datagen_success"})


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=[training_job],
    request_job=serving_job,
    default_status=DefaultSensorStatus.RUNNING,
    description="Starts serving_job (export, register, promote, A/B config, feed) for a day when its training run "
    "succeeds; a training run that failed a blocking model check never gets here.",
)
def serving_after_training_sensor(context: RunStatusSensorContext):
    day = context.dagster_run.tags.get("dagster/partition")
    if not day:
        return SkipReason(f"training run {context.dagster_run.run_id} has no partition")
    return RunRequest(partition_key=day, run_key=f"serving:{day}:{context.dagster_run.run_id}",
                      tags={"recsys/trigger": "training_success"})


@sensor(
    job=online_evaluation_job,
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.RUNNING,
    description="Starts online_evaluation for a feed day once the serving side's impressions log for it has a "
    "_SUCCESS marker (one run per day and marker).",
)
def impressions_log_sensor(context: SensorEvaluationContext, storage: StorageResource):
    import posixpath

    from recsys_assets.serving.serving_config import load_serving_spec, log_path

    store, template = storage.store, load_serving_spec().online_evaluation.impressions_log
    today = last_complete_day(dt.datetime.now(dt.timezone.utc))
    days = [(dt.date.fromisoformat(today) - dt.timedelta(days=i)).isoformat() for i in range(0, 14)]
    requests = []
    for day in days:
        marker = posixpath.join(log_path(template, store, day), "_SUCCESS")
        info = store.fs.get_file_info(marker)
        if info.type == pafs.FileType.File:
            requests.append(RunRequest(partition_key=day, run_key=f"online_eval:{day}:{info.mtime_ns}",
                                       tags={"recsys/trigger": "impressions_log"}))
    return requests or SkipReason("no impressions logs in the last 14 days")


datagen_sensors = [
    raw_success_file_sensor,
    raw_data_freshness_sensor,
    check_failure_sensor,
    notification_delivery_sensor,
    datagen_run_failure_sensor,
    monitoring_summary_sensor,
    training_after_datagen_sensor,
    serving_after_training_sensor,
    impressions_log_sensor,
]
