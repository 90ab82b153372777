"""The storage resource: the data root of a deployment (local path, file:// or gs://), handing assets, checks and
sensors one DatasetStore (resources/store.py) per process."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from resources.store import DatasetStore

DATA_ROOT_ENV, DEFAULT_DATA_ROOT = "RECSYS_DATA_ROOT", "./data"


def data_root_from_env() -> str:
    """The deployment's data root (RECSYS_DATA_ROOT, else ./data): what Definitions and the command lines use."""
    import os

    return os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT)


class StorageResource(ConfigurableResource):
    """Where all data lives: raw inputs (upstream contract) and derived, committed partitions."""

    data_root: str = Field(
        default="./data",
        description="Root URI of all data: a local path, file:///abs/path, or gs://bucket/prefix in production.",
    )
    _store: DatasetStore | None = PrivateAttr(default=None)

    @property
    def store(self) -> DatasetStore:
        if self._store is None:
            self._store = DatasetStore(self.data_root)
        return self._store
