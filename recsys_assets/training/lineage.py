"""The training window as lineage: partition D of a model depends on the training_events (and user_history) days
[D - window_days, D], with window_days the deployment's, read once when the code location loads
(recsys_assets/config/files.py refuses a run whose training YAML says otherwise)."""

from __future__ import annotations

from dagster import AssetDep, AssetKey, TimeWindowPartitionMapping

from recsys_assets.config.files import lineage_window_days


def window_dep(asset: str) -> AssetDep:
    """`asset` partitions [D - window_days, D] as the lineage of partition D (missing days allowed)."""
    w = lineage_window_days()
    return AssetDep(
        AssetKey(asset),
        partition_mapping=TimeWindowPartitionMapping(
            start_offset=-w, end_offset=0, allow_nonexistent_upstream_partitions=True
        ),
    )
