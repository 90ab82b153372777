"""Reading and writing model artifacts in versioned partition directories of the DatasetStore.

Every model/index partition is a directory `<asset>/dt=<day>/v=<version>/` holding weights, an exported program,
the vocabulary it was trained with, configs and metrics, committed atomically like the datagen partitions.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from recsys_assets.core.days import shift_day
from recsys_assets.core.store_dirs import PartitionVersion, StoreDir
from resources.store import DatasetStore

if TYPE_CHECKING:  # annotations only: the modules load where they are used
    from recsys_assets.ml.features import Vocab


def write_vocab(directory: StoreDir, vocab: Vocab, moments: dict) -> None:
    """The exact encoding a model was trained with: its vocabulary and dense-feature moments."""
    directory.write_table("vocab.parquet", vocab.to_table())
    directory.write_json("feature_moments.json", moments)


def read_vocab(directory: StoreDir) -> tuple[Vocab, dict]:
    import pyarrow as pa

    from recsys_assets.ml.features import Vocab

    vocab = Vocab.from_table(directory.read_table("vocab.parquet"))
    # The read's decode buffers stay cached in Arrow's pool otherwise: 43 MB of the 124 MB a 143k-token vocab cost.
    pa.default_memory_pool().release_unused()
    return vocab, directory.read_json("feature_moments.json")


class ArtifactDir(PartitionVersion):
    """A model/index partition version being read: PartitionVersion plus the vocabulary a model was trained with."""

    def read_vocab(self) -> tuple[Vocab, dict]:
        return read_vocab(self)


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
