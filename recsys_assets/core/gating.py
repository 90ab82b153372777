"""How a blocking check gates its dataset: it judges the staged version of the partition and records its verdict
there, and the storage layer commits the version only when every blocking check of the dataset has passed
(resources/storage.py, recsys_assets/core/datasets.py). A failed verdict withholds the version from every reader,
in this run and any later one; the result says so, and which version readers keep.
"""

from __future__ import annotations

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue

from resources.store import DatasetStore


def judged_version(store: DatasetStore, dataset: str, day: str) -> str:
    """The version a check of this partition judges: the staged candidate, else the committed version."""
    return store.version_under_check(dataset, day)


def gate(
    store: DatasetStore, dataset: str, day: str, version: str, check_name: str, result: AssetCheckResult
) -> AssetCheckResult:
    """Record a blocking check's verdict on `version` and return the result with what it means downstream."""
    state = store.record_verdict(dataset, day, version, check_name, result.passed, result.description or "")
    description = result.description or ""
    if not result.passed:
        description = f"WITHHELD from downstream: {description} ({state.describe()})"
    elif state.state == "pending":
        description = f"{description} ({state.describe()})"
    metadata = {
        **(result.metadata or {}),
        "judged_version": version,
        "gate_state": state.state,
        "readable_version": state.committed_version or "none",
        "withheld": MetadataValue.bool(not result.passed),
    }
    return AssetCheckResult(
        passed=result.passed,
        severity=result.severity or AssetCheckSeverity.ERROR,
        description=description,
        metadata=metadata,
    )
