"""The MLflow replay: runs a down tracking server did not take (queued in the data root's mlflow_pending/ by the
model assets) are logged once it answers."""

from __future__ import annotations

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from recsys_assets.training.tracking import pending_payloads, replay_pending
from resources.mlflow import MlflowResource
from resources.storage import StorageResource


@sensor(
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.RUNNING,
    description="Logs the MLflow runs that training assets queued while the tracking server was down "
    "(mlflow_pending/ in the data root), oldest first; stops at the first failure and tries again next tick.",
)
def mlflow_replay_sensor(context: SensorEvaluationContext, storage: StorageResource, mlflow: MlflowResource):
    if not mlflow.enabled:
        return SkipReason("MLflow tracking is off (no tracking URI)")
    if not pending_payloads(storage.store):
        return SkipReason("no queued MLflow runs")
    result = replay_pending(mlflow, storage.store)
    for path in result["invalid"]:
        context.log.warning(f"{path}: not a queued MLflow run of this platform; left in place, not logged")
    msg = f"logged {len(result['logged'])} queued MLflow run(s): {', '.join(result['logged']) or 'none'}"
    if result["error"]:
        msg += f"; the tracking server still fails ({result['error']}): the rest wait for the next tick"
    return SkipReason(msg)
