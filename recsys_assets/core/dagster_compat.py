"""The one place this project touches a private Dagster API, and why.

Alerting on failed check evaluations (WARN ones included, which fail no run) needs each evaluation's execution
record: `instance.event_log_storage.get_asset_check_execution_history` (public method) returns records whose
status enum, `AssetCheckExecutionRecordStatus`, is only importable from `dagster._core` in 1.13; there is no public
status on the record.

A datagen range run reports each day's check evaluations itself (recsys_assets/datagen/ranges.py). For Declarative
Automation's `check_passed` (and the UI) an evaluation counts only when it names the materialization it judged:
`AssetCheckEvaluation(target_materialization_data=...)` takes an `AssetCheckEvaluationTargetMaterializationData`,
which 1.13 does not export publicly. Everything else uses public APIs.
"""

from __future__ import annotations

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus


def check_execution_failed(record) -> bool:
    """True for an asset check execution record whose evaluation ran and did not pass."""
    return (
        record.status == AssetCheckExecutionRecordStatus.FAILED
        and record.evaluation is not None
        and not record.evaluation.passed
    )


def latest_materialization_target(
    instance: DagsterInstance, asset_key: AssetKey, partition: str
) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The latest materialization of the partition, as the target a check evaluation of it refers to."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    r = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=r.storage_id, run_id=r.run_id, timestamp=r.timestamp
    )
