"""Reading and writing model artifacts in versioned partition directories of the DatasetStore.

Every model/index partition is a directory `<asset>/dt=<day>/v=<version>/` holding weights, an exported program,
the vocabulary it was trained with, configs and metrics, committed atomically like the datagen partitions.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recsys_assets.core.datasets import (  # noqa: F401 (re-exported: the artifact datasets' names)
    COLD_START_INDEX, OFFLINE_EVALUATION, RANKER_MODEL, RETRIEVAL_INDEX, RETRIEVAL_MODEL, VOCAB,
)
from recsys_assets.partitions import shift_day
from recsys_assets.training.features import Vocab
from resources.storage import DatasetStore


class StoreDir:
    """Files under one directory of the store: bytes, JSON, Parquet tables, torch objects, a vocabulary."""

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
        buf = io.BytesIO()
        torch.save(obj, buf)
        self.write_bytes(name, buf.getvalue())

    def read_torch(self, name: str):
        return torch.load(io.BytesIO(self.read_bytes(name)), map_location="cpu", weights_only=True)

    def write_vocab(self, vocab: Vocab, moments: dict) -> None:
        self.write_table("vocab.parquet", vocab.to_table())
        self.write_json("feature_moments.json", moments)

    def read_vocab(self) -> tuple[Vocab, dict]:
        return Vocab.from_table(self.read_table("vocab.parquet")), self.read_json("feature_moments.json")


class ArtifactDir(StoreDir):
    """One version directory of a model/index partition being written (or a committed one being read)."""

    def __init__(self, store: DatasetStore, dataset: str, day: str, version: str):
        super().__init__(store, store.version_path(dataset, day, version))
        self.dataset, self.day, self.version = dataset, day, version

    @classmethod
    def committed(cls, store: DatasetStore, dataset: str, day: str) -> "ArtifactDir":
        return cls(store, dataset, day, store.committed_version(dataset, day))

    @property
    def uri(self) -> str:
        return self.store.version_uri(self.dataset, self.day, self.version)


def latest_committed_before(store: DatasetStore, dataset: str, day: str, lookback_days: int = 30) -> str | None:
    """The most recent day before `day` (within lookback) with a committed partition of `dataset`."""
    for back in range(1, lookback_days + 1):
        d = shift_day(day, -back)
        if store.read_manifest(dataset, d) is not None:
            return d
    return None


def fingerprint(*parts: object) -> str:
    """Stable hash of what determines a training run (config, data versions): checkpoints resume only on a match."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
