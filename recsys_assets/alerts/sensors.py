"""Alerts across every domain: failed check evaluations (WARN ones too, which do not fail runs), failed runs,
and the delivery of every queued notification. The checks watched are the ones the code location defines (read
from the repository at evaluation time), so a new check is covered without a list to update."""

import json

from dagster import (
    AssetCheckKey,
    DefaultSensorStatus,
    RunFailureSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from recsys_assets.core.dagster_compat import check_execution_failed
from resources.notifier import NotifierResource


def check_keys(context: SensorEvaluationContext) -> list[AssetCheckKey]:
    """Every asset check of the code location this sensor belongs to."""
    return sorted(context.repository_def.asset_graph.asset_check_keys, key=lambda k: k.to_user_string())


PAGE = 100


def new_executions(storage, key: AssetCheckKey, after_id: int) -> list:
    """Every execution record of the check with an id above `after_id`, oldest first (the history pages backwards:
    all pages down to `after_id`, so a burst of failures between ticks is never cut to the newest page)."""
    out, cursor = [], None
    while True:
        page = storage.get_asset_check_execution_history(key, limit=PAGE, cursor=cursor)
        newer = [r for r in page if r.id > after_id]
        out += newer
        if len(page) < PAGE or len(newer) < len(page):
            return sorted(out, key=lambda r: r.id)
        cursor = min(r.id for r in page)


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
    for key in check_keys(context):
        name = key.to_user_string()
        last_id = cursor.get(name, 0)
        records = new_executions(storage, key, last_id)
        for rec in records:
            ev = rec.evaluation
            # A notification that cannot be stored raises (OutboxUnavailable): the tick fails visibly and the cursor
            # stays where it was, so the next tick queues it (what was stored is not queued twice: keyed).
            if check_execution_failed(rec):
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
            cursor[name] = max(last_id, records[-1].id)
    context.update_cursor(json.dumps(cursor, sort_keys=True))
    return SkipReason(f"queued {queued} check-failure notifications")


@run_failure_sensor(
    default_status=DefaultSensorStatus.RUNNING,
    description="Queues an error notification for every failed run of this code location (a failed blocking check "
    "fails its run).",
)
def run_failure_alert_sensor(context: RunFailureSensorContext, notifier: NotifierResource):
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
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Delivers queued notifications (check failures, failed runs, late raw data, daily summaries) to the "
    "info/error webhooks within a time budget per tick; a down or hanging webhook is retried with backoff and "
    "never re-sent what it already received.",
)
def notification_delivery_sensor(context: SensorEvaluationContext, notifier: NotifierResource):
    counts = notifier.deliver_pending()
    return SkipReason(", ".join(f"{k} {v}" for k, v in counts.items()))


alert_sensors = [check_failure_sensor, run_failure_alert_sensor, notification_delivery_sensor]
