"""Writing a partition: a new version directory, files written into it, then one `publish()` that commits it (or
stages it for its blocking checks, recsys_assets/core/datasets.py). Every asset that writes a partition does
exactly this, through this class: `out = PartitionVersion.new(store, dataset, day, run_id)`, `out.write_*`,
`out.publish(**manifest)`. Reading a committed one: `PartitionVersion.committed(store, dataset, day)`.
"""

from __future__ import annotations

import io
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from recsys_assets.core.datasets import publish_partition
from resources.store import DatasetStore


class StoreDir:
    """Files under one directory of the store: bytes, JSON, Parquet tables, torch objects."""

    def __init__(self, store: DatasetStore, root: str):
        self.store, self.root = store, root

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.store.write_bytes_atomic(self.path(name), data)

    def read_bytes(self, name: str) -> bytes:
        with self.store.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def write_json(self, name: str, obj: dict) -> None:
        self.store.write_json_atomic(self.path(name), obj)

    def read_json(self, name: str) -> dict:
        return self.store.read_json(self.path(name))

    def write_table(self, name: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(name, buf.getvalue())

    def read_table(self, name: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(name)))

    def write_torch(self, name: str, obj) -> None:
        import torch  # here, not at import: loading the code location must not pay for torch

        buf = io.BytesIO()
        torch.save(obj, buf)
        self.write_bytes(name, buf.getvalue())

    def read_torch(self, name: str):
        import torch

        # weights_only: tensors and plain containers only; a file planted in the data root cannot run code.
        return torch.load(io.BytesIO(self.read_bytes(name)), map_location="cpu", weights_only=True)


class PartitionVersion(StoreDir):
    """One version directory `<dataset>/dt=<day>/v=<version>/` being written, or a committed one being read."""

    def __init__(self, store: DatasetStore, dataset: str, day: str, version: str):
        super().__init__(store, store.version_path(dataset, day, version))
        self.dataset, self.day, self.version = dataset, day, version

    @classmethod
    def new(cls, store: DatasetStore, dataset: str, day: str, run_id: str | None = None):
        return cls(store, dataset, day, store.new_version(run_id))

    @classmethod
    def committed(cls, store: DatasetStore, dataset: str, day: str):
        return cls(store, dataset, day, store.committed_version(dataset, day))

    @property
    def uri(self) -> str:
        return self.store.version_uri(self.dataset, self.day, self.version)

    def publish(self, **manifest: object) -> dict:
        """Commit the written version (or stage it until the dataset's blocking checks pass)."""
        return publish_partition(self.store, self.dataset, self.day, self.version, **manifest)
