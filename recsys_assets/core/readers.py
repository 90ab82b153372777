"""Readers of committed partitions that every layer shares (pyarrow only: a Spark stage, a training worker and an
asset read them the same way)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads

from recsys_assets.core.datasets import TRAINING_EVENTS, USER_HISTORY
from resources.store import DatasetStore


def read_final_items(store: DatasetStore, day: str, columns: list[str] | None = None) -> pa.Table:
    """The final items (item-sized) of a committed training_events partition."""
    return pads.dataset(
        store.committed_path(TRAINING_EVENTS, day, "items"), filesystem=store.fs, format="parquet"
    ).to_table(columns=columns)


def read_history_table(store: DatasetStore, day: str) -> pa.Table:
    """The committed user_history of `day` (user_id, item_ids, event_ts): user-sized, read whole."""
    path = store.committed_path(USER_HISTORY, day, "history")
    return pads.dataset(path, filesystem=store.fs, format="parquet").to_table(
        columns=["user_id", "item_ids", "event_ts"]
    )
