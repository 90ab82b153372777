"""Which training_events partitions a model partition trains and validates on (the temporal split)."""

from __future__ import annotations

from dataclasses import dataclass

from dagster import AssetDep, TimeWindowPartitionMapping

from recsys_assets.datagen.stages import TRAINING_EVENTS
from recsys_assets.partitions import shift_day
from recsys_assets.training.config import load_training_spec
from resources.storage import DatasetStore


class NoTrainingDataError(RuntimeError):
    pass


@dataclass(frozen=True)
class TrainingWindow:
    """Train on the committed days of [day - window_days, day - 1]; validate on `day`."""

    train_days: list[str]
    validation_day: str
    versions: dict[str, str]

    def as_dict(self) -> dict:
        return {"train_days": self.train_days, "validation_day": self.validation_day, "data_versions": self.versions}


def training_window(store: DatasetStore, day: str, window_days: int) -> TrainingWindow:
    candidates = [shift_day(day, -k) for k in range(window_days, 0, -1)]
    train = [d for d in candidates if store.read_manifest(TRAINING_EVENTS, d) is not None]
    if not train:
        raise NoTrainingDataError(
            f"no committed training_events in the {window_days} days before {day} "
            f"({candidates[0]}..{candidates[-1]}): materialize training_events for them first"
        )
    versions = {d: store.committed_version(TRAINING_EVENTS, d) for d in [*train, day]}
    return TrainingWindow(train_days=train, validation_day=day, versions=versions)


def window_dep(asset) -> AssetDep:
    """training_events partitions [D - window_days, D] as the lineage of partition D (missing days allowed)."""
    w = load_training_spec().window_days
    return AssetDep(
        asset,
        partition_mapping=TimeWindowPartitionMapping(start_offset=-w, end_offset=0, allow_nonexistent_upstream_partitions=True),
    )
