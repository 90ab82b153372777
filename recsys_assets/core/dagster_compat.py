"""The one place this project touches a private Dagster API, and why.

Alerting on failed check evaluations (WARN ones included, which fail no run) needs each evaluation's execution
record: `instance.event_log_storage.get_asset_check_execution_history` (public method) returns records whose
status enum, `AssetCheckExecutionRecordStatus`, is only importable from `dagster._core` in 1.13; there is no public
status on the record. Everything else uses public APIs.
"""

from __future__ import annotations

from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus


def check_execution_failed(record) -> bool:
    """True for an asset check execution record whose evaluation ran and did not pass."""
    return (
        record.status == AssetCheckExecutionRecordStatus.FAILED
        and record.evaluation is not None
        and not record.evaluation.passed
    )
