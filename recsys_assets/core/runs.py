"""The asset side's prologue and write sequence, written once: what a daily asset resolves first (its partition day,
the store, its run id and log) and how it writes a partition (a new version directory, the files, one publish that
commits it or stages it for its blocking checks, recsys_assets/core/store_dirs.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from recsys_assets.core.store_dirs import PartitionVersion
from resources.store import DatasetStore


@dataclass(frozen=True)
class DayRun:
    """One day of one run: `day`, the store, the run id (names the version it writes), and the run's log."""

    day: str
    store: DatasetStore
    run_id: str
    log: Callable[[str], None]

    @classmethod
    def of(cls, context, storage, day: str | None = None) -> DayRun:
        """The run's partition day (or `day` of a range run), from an asset or op context and the storage resource."""
        return cls(day or context.partition_key, storage.store, context.run_id, context.log.info)

    def new_version(self, dataset: str) -> PartitionVersion:
        """An empty version directory of the day's partition, named after this run (for writers elsewhere: Spark)."""
        return PartitionVersion.new(self.store, dataset, self.day, self.run_id)

    def committed(self, dataset: str) -> PartitionVersion:
        return PartitionVersion.committed(self.store, dataset, self.day)

    def write(self, dataset: str, write: Callable[[PartitionVersion], dict | None]) -> PartitionVersion:
        """new version -> `write(out)` (its files; returns the manifest's extra keys) -> publish."""
        out = self.new_version(dataset)
        out.publish(**(write(out) or {}))
        return out


def json_file(name: str, obj: dict, **manifest: object) -> Callable[[PartitionVersion], dict]:
    """A `write` for DayRun.write: one JSON file (a report), and the manifest's extra keys."""

    def write(out: PartitionVersion) -> dict:
        out.write_json(name, obj)
        return manifest

    return write
